/* A TFLite external delegate library without hardware behind it, for tests of the delegate
 * plugins up to the hardware boundary (LiteRT's load_delegate() -> Delegate -> interpreter).
 *
 * It exports the external delegate interface
 * (tensorflow/lite/delegates/external/external_delegate_interface.h):
 * - option "fail" = MESSAGE: report MESSAGE through the error callback and return NULL,
 *   as libedgetpu does when no Edge TPU is attached;
 * - otherwise: return a delegate whose Prepare claims no node, so the interpreter loads it
 *   and runs every op on the CPU, as a real delegate does for ops it does not support.
 * Build: cc -shared -fPIC -o libfake_delegate.so fake_delegate.c
 */
#include <stdlib.h>
#include <string.h>

/* The leading fields of TfLiteDelegate (tensorflow/lite/core/c/common.h); the rest stays zero. */
typedef struct FakeDelegate {
  void* data_;
  int (*Prepare)(void* context, struct FakeDelegate* delegate);
  void* CopyFromBufferHandle;
  void* CopyToBufferHandle;
  void* FreeBufferHandle;
  long long flags;
  void* opaque_delegate_builder;
  char reserved[192]; /* room for fields newer TFLite versions may add */
} FakeDelegate;

static int prepare_nothing(void* context, FakeDelegate* delegate) {
  (void)context;
  (void)delegate;
  return 0; /* kTfLiteOk, no node replaced */
}

FakeDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                            void (*report_error)(const char*)) {
  for (size_t i = 0; i < n; i++) {
    if (strcmp(keys[i], "fail") == 0) {
      if (report_error) report_error(values[i]);
      return NULL;
    }
  }
  FakeDelegate* d = calloc(1, sizeof(FakeDelegate));
  if (d) d->Prepare = prepare_nothing;
  return d;
}

void tflite_plugin_destroy_delegate(FakeDelegate* delegate) { free(delegate); }
