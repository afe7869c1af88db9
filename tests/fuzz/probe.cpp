// Configure-time probe: does this clang link libFuzzer and AddressSanitizer?
#include <cstddef>
#include <cstdint>
extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }
