// A task's request to pardo's launcher or to a keeper (shepherd/protocol.hpp's
// LaunchRequest and its strings): what every rung that starts its tasks there says alike.
#pragma once

#include <string>

#include "proc.hpp"
#include "shepherd/protocol.hpp"
#include "spawn.hpp"

namespace pardo {

// Fill *h (from zero) and *strings with the plan's program, arguments, environment (this
// process's as it is now, without one of the task's own), working directory (the task's,
// else this process's as it is now), CPUs, niceness, limits and the signals the task
// starts with ignored. The rung adds its own flags and fields after.
void encode_launch(const ChildPlan& plan, const IgnoredSignals& ignored, LaunchRequest* h,
                   std::string* strings);

}  // namespace pardo
