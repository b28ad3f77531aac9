// Ctrl-C for the CPU engines: the poll they call between chunks of work asks Python,
// under the GIL taken briefly, whether a signal is pending (csrc/common/interrupt.h).
#pragma once

#include <pybind11/pybind11.h>

#include "common/interrupt.h"

namespace gaussreg {
namespace cpu {

// A pending Ctrl-C (or any Python signal whose handler raises) stops the engine; the
// handler's exception is left set for the binding to raise.
inline bool python_signal_pending(void*) {
  pybind11::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

inline InterruptPoll python_interrupt_poll() { return InterruptPoll{python_signal_pending, nullptr}; }

// Runs `work(poll)` where the GIL is already released; an interrupt noticed inside is raised
// as the Python exception the signal handler left (KeyboardInterrupt). The workspace belongs
// to the caller and is freed with its tensors.
template <typename Work>
void run_interruptible_released(Work&& work) {
  try {
    work(python_interrupt_poll());
  } catch (const Interrupted&) {
    pybind11::gil_scoped_acquire gil;
    throw pybind11::error_already_set();
  }
}

// The same for a caller that holds the GIL: released while `work` runs.
template <typename Work>
void run_interruptible(Work&& work) {
  bool interrupted = false;
  {
    pybind11::gil_scoped_release release;
    try {
      work(python_interrupt_poll());
    } catch (const Interrupted&) {
      interrupted = true;
    }
  }
  if (interrupted) throw pybind11::error_already_set();
}

}  // namespace cpu
}  // namespace gaussreg
