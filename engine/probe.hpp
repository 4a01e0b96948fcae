// What this kernel and this process can do, for `pardo doctor`.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace pardo {

// (feature, finding) pairs, e.g. ("pidfd", "yes"), ("cgroup2 mount", "/sys/fs/cgroup").
std::vector<std::pair<std::string, std::string>> probe_features();

}  // namespace pardo
