// The shepherd rung: each task's keeper (rungs/keepers.hpp) is a child subreaper that
// kills and reaps the task's whole tree, setsid/double-fork escapees included, and exits
// only once waitpid() says ECHILD: its end means "tree gone".
#include "rungs/keepers.hpp"

namespace pardo {
namespace {

class ShepherdRung : public KeeperRung {
 public:
  explicit ShepherdRung(std::string path) : KeeperRung(std::move(path)) {}
  const char* name() const override { return "shepherd"; }
};

}  // namespace

std::unique_ptr<Rung> make_shepherd_rung(const std::string& shepherd_path) {
  return std::make_unique<ShepherdRung>(shepherd_path);
}

}  // namespace pardo
