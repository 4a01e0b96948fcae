// Messages with fds (SCM_RIGHTS) on pardo's unix sockets, for both of their ends: the
// supervisor, and the freestanding pardo-shepherd (nothing here calls libc). Each message
// carries at most one SCM_RIGHTS block: the only kind pardo sends.
#pragma once

#include <stddef.h>
#include <sys/socket.h>

namespace pardo {

// Room for the control data of n fds.
constexpr size_t fds_space(size_t n) { return CMSG_SPACE(sizeof(int) * n); }

// Attach fds[0..n) to *mh, in cbuf (room for fds_space(n), aligned for a cmsghdr).
inline void attach_fds(struct msghdr* mh, void* cbuf, const int* fds, size_t n) {
  if (n == 0) {
    mh->msg_control = nullptr;
    mh->msg_controllen = 0;
    return;
  }
  mh->msg_control = cbuf;
  mh->msg_controllen = fds_space(n);
  struct cmsghdr* c = CMSG_FIRSTHDR(mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * n);
  int* p = reinterpret_cast<int*>(CMSG_DATA(c));
  for (size_t i = 0; i < n; ++i) p[i] = fds[i];
}

// *mh after a send that took its first n bytes: the rest, without the fds (they went with
// the first byte).
inline void advance_sent(struct msghdr* mh, size_t n) {
  mh->msg_control = nullptr;
  mh->msg_controllen = 0;
  while (mh->msg_iovlen && n >= mh->msg_iov[0].iov_len) {
    n -= mh->msg_iov[0].iov_len;
    ++mh->msg_iov;
    --mh->msg_iovlen;
  }
  if (mh->msg_iovlen) {
    mh->msg_iov[0].iov_base = static_cast<char*>(mh->msg_iov[0].iov_base) + n;
    mh->msg_iov[0].iov_len -= n;
  }
}

// The fds a received *mh carried: how many, *fds pointing at them in its control data.
inline int received_fds(struct msghdr* mh, const int** fds) {
  struct cmsghdr* c = CMSG_FIRSTHDR(mh);
  if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) return 0;
  *fds = reinterpret_cast<const int*>(CMSG_DATA(c));
  return static_cast<int>((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
}

}  // namespace pardo
