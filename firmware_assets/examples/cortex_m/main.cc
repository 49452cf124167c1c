// Example integration of edgecls firmware assets on a Cortex-M7 board (see README.md).
// Not built in CI: it needs the TFLM tree, CMSIS-NN and the board support package.
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "model_data.h"
#include "model_settings.h"
#include "op_resolver.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/schema/schema_generated.h"

using namespace edgecls_model;

// The arena in AXI SRAM (section defined in the board's linker script), 16-byte aligned.
alignas(16) __attribute__((section(".axisram"))) static uint8_t tensor_arena[kTensorArenaSize];

static tflite::MicroInterpreter* Interpreter() {
  static ModelOpResolver resolver;
  static bool registered = RegisterModelOps(resolver) == kTfLiteOk;
  static tflite::MicroInterpreter interpreter(tflite::GetModel(model_data), resolver, tensor_arena,
                                              kTensorArenaSize);
  static bool allocated = registered && interpreter.AllocateTensors() == kTfLiteOk;
  return allocated ? &interpreter : nullptr;
}

// `rgb`: kInputHeight x kInputWidth x 3 bytes, already resized. Returns the class index or -1.
int Classify(const uint8_t* rgb) {
  tflite::MicroInterpreter* interpreter = Interpreter();
  if (interpreter == nullptr) return -1;
  int8_t* input = interpreter->input(0)->data.int8;
  for (int i = 0; i < kInputHeight * kInputWidth * kInputChannels; ++i) {
    const float normalized = rgb[i] / 127.5f - 1.0f;  // MobileNet: pixels to [-1, 1]
    const int q = static_cast<int>(std::lround(normalized / kInputScale)) + kInputZeroPoint;
    input[i] = static_cast<int8_t>(q < -128 ? -128 : (q > 127 ? 127 : q));
  }
  if (interpreter->Invoke() != kTfLiteOk) return -1;
  const int8_t* scores = interpreter->output(0)->data.int8;
  int best = 0;
  for (int c = 1; c < kNumClasses; ++c) best = scores[c] > scores[best] ? c : best;
  std::printf("%s (%.2f)\n", kCategoryLabels[best], (scores[best] - kOutputZeroPoint) * kOutputScale);
  return best;
}
