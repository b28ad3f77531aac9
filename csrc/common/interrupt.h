// A long host-side computation asks, between chunks of work, whether its caller wants it
// to stop (a pending Ctrl-C), without knowing who the caller is: the binding passes a
// function that answers (for Python: PyErr_CheckSignals under the GIL, taken briefly).
#pragma once

#include <exception>

namespace gaussreg {

// Thrown between chunks when the caller asked to stop; the binding turns it back into the
// caller's own error (KeyboardInterrupt), after every workspace has been released.
struct Interrupted : std::exception {
  const char* what() const noexcept override { return "interrupted"; }
};

struct InterruptPoll {
  bool (*pending)(void* context) = nullptr;
  void* context = nullptr;

  // Called only from the thread that entered the engine, outside parallel regions.
  void operator()() const {
    if (requested()) throw Interrupted();
  }
  // The same question without the throw, for an engine that must first leave a parallel
  // region (its master thread, the one that entered, may ask from inside it).
  bool requested() const { return pending != nullptr && pending(context); }
};

}  // namespace gaussreg
