// Minimal stand-in for TFLM's MicroMutableOpResolver, so the host tests can compile the
// generated op_resolver.h with -Wall -Wextra -Werror without the TFLM sources. It declares
// only the Add* calls edgecls generates; a misspelt call fails to compile.
#ifndef EDGECLS_STUB_MICRO_MUTABLE_OP_RESOLVER_H_
#define EDGECLS_STUB_MICRO_MUTABLE_OP_RESOLVER_H_

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
#define TF_LITE_ENSURE_STATUS(a) \
  do {                           \
    if ((a) != kTfLiteOk) {      \
      return kTfLiteError;       \
    }                            \
  } while (0)

namespace tflite {
template <unsigned int tOpCount>
class MicroMutableOpResolver {
 public:
  TfLiteStatus Register() { return ++count_ <= tOpCount ? kTfLiteOk : kTfLiteError; }
  TfLiteStatus AddAdd() { return Register(); }
  TfLiteStatus AddAveragePool2D() { return Register(); }
  TfLiteStatus AddConcatenation() { return Register(); }
  TfLiteStatus AddConv2D() { return Register(); }
  TfLiteStatus AddDepthwiseConv2D() { return Register(); }
  TfLiteStatus AddDequantize() { return Register(); }
  TfLiteStatus AddFullyConnected() { return Register(); }
  TfLiteStatus AddHardSwish() { return Register(); }
  TfLiteStatus AddLogistic() { return Register(); }
  TfLiteStatus AddMaxPool2D() { return Register(); }
  TfLiteStatus AddMean() { return Register(); }
  TfLiteStatus AddMul() { return Register(); }
  TfLiteStatus AddPad() { return Register(); }
  TfLiteStatus AddQuantize() { return Register(); }
  TfLiteStatus AddRelu() { return Register(); }
  TfLiteStatus AddRelu6() { return Register(); }
  TfLiteStatus AddReshape() { return Register(); }
  TfLiteStatus AddSoftmax() { return Register(); }
  TfLiteStatus AddSqueeze() { return Register(); }

 private:
  unsigned int count_ = 0;
};
}  // namespace tflite

#endif  // EDGECLS_STUB_MICRO_MUTABLE_OP_RESOLVER_H_
