// gil_kernel: a long C++ loop that lets other Python threads run while it works.
//
// The rules this file follows (README, "Native code and the GIL"):
//  1. Long pure-C++ work runs with the GIL released: py::call_guard<py::gil_scoped_release>
//     releases it after the arguments are converted and takes it back before the result is
//     converted, so every Python thread can run meanwhile.
//  2. Without the GIL, touch no Python object: no py::object copy (an incref), no
//     destructor (a decref), no call. That is why `progress` is taken by const reference:
//     a by-value py::object parameter would be destroyed — decref'd — while the GIL is
//     released.
//  3. To call back into Python, take the GIL for exactly the duration of the call with
//     py::gil_scoped_acquire, then let it go again.
#include <pybind11/pybind11.h>

#include <cstdint>

namespace py = pybind11;

namespace {

// splitmix64: a few multiply/shift rounds, enough work per step that the loop is
// compute-bound, and a data dependency so the compiler cannot skip it.
inline std::uint64_t mix(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

std::uint64_t crunch(std::uint64_t iterations, const py::object& progress, std::uint64_t every) {
    // The GIL is released here (call_guard below). `progress` is only read, by reference:
    // is_none() compares a pointer and touches no reference count.
    const bool report = every > 0 && !progress.is_none();
    std::uint64_t h = 0;
    for (std::uint64_t i = 0; i < iterations; ++i) {
        h = mix(h + i);
        if (report && (i + 1) % every == 0) {
            py::gil_scoped_acquire hold;  // rule 3: the GIL for the callback only
            progress(i + 1);              // a Python exception propagates from here
        }
    }
    return h;
}

std::uint64_t crunch_holding_gil(std::uint64_t iterations) {
    // The same work without releasing the GIL: no other Python thread runs meanwhile.
    std::uint64_t h = 0;
    for (std::uint64_t i = 0; i < iterations; ++i) h = mix(h + i);
    return h;
}

}  // namespace

PYBIND11_MODULE(gil_kernel, m) {
    m.doc() = "A compute kernel that releases the GIL, and one that does not, for comparison.";
    m.def("crunch", &crunch, py::arg("iterations"), py::arg("progress") = py::none(),
          py::arg("every") = 0, py::call_guard<py::gil_scoped_release>(),
          "Mix `iterations` numbers with the GIL released; call progress(done) every "
          "`every` steps (with the GIL held for the call). Returns the final hash.");
    m.def("crunch_holding_gil", &crunch_holding_gil, py::arg("iterations"),
          "The same loop, holding the GIL throughout.");
}
