// Host check of generated firmware assets: the C array is the .tflite file, byte for byte,
// 16-byte aligned, with the TFLite flatbuffer identifier. Built by the tests with
//   g++ -std=c++17 -Wall -Wextra -Werror -I<generated> harness.cc <generated>/model_data.cc
// and run as `harness <model.tflite>`; exit 0 when every check passes.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "model_data.h"
#include "model_settings.h"

// The generated names, given on the command line, e.g. -DEDGECLS_DATA=edgecls_model::model_data
// -DEDGECLS_DATA_LEN=edgecls_model::model_data_len -DEDGECLS_ARENA=edgecls_model::kTensorArenaSize
// -DEDGECLS_CLASSES=edgecls_model::kNumClasses (edgecls.firmware.harness_defines writes them).

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s model.tflite\n", argv[0]);
    return 2;
  }
  std::ifstream file(argv[1], std::ios::binary);
  std::vector<unsigned char> expected((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  int failures = 0;
  if (EDGECLS_DATA_LEN != expected.size()) {
    std::printf("FAIL length: array %u bytes, file %zu bytes\n", EDGECLS_DATA_LEN, expected.size());
    ++failures;
  }
  if (reinterpret_cast<std::uintptr_t>(EDGECLS_DATA) % 16 != 0) {
    std::printf("FAIL alignment: array not 16-byte aligned\n");
    ++failures;
  }
  if (EDGECLS_DATA_LEN < 8 || std::memcmp(EDGECLS_DATA + 4, "TFL3", 4) != 0) {
    std::printf("FAIL identifier: bytes 4-7 are not TFL3\n");
    ++failures;
  }
  if (failures == 0 && std::memcmp(EDGECLS_DATA, expected.data(), expected.size()) != 0) {
    std::printf("FAIL content: array differs from the file\n");
    ++failures;
  }
  if (EDGECLS_ARENA <= 0 || EDGECLS_CLASSES <= 0) {
    std::printf("FAIL settings: arena %d, classes %d\n", EDGECLS_ARENA, EDGECLS_CLASSES);
    ++failures;
  }
  std::printf("%s: %u bytes, aligned, TFL3, %d classes, arena %d bytes\n", failures ? "FAIL" : "OK", EDGECLS_DATA_LEN,
              EDGECLS_CLASSES, EDGECLS_ARENA);
  return failures ? 1 : 0;
}
