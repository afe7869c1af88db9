# A libFuzzer target for the checkpoint and safetensors loaders, built with clang and
# AddressSanitizer + UndefinedBehaviorSanitizer from the loader sources (the rest of
# the engine is the gcc-built library), and a ctest run of it for a bounded time from
# a seed corpus. Skipped when clang with libFuzzer is not installed (scripts/setup
# installs it).
set(TANDEM_FUZZ_SECONDS 60 CACHE STRING "Seconds the checkpoint fuzzer runs under ctest")
find_program(TANDEM_CLANGXX NAMES clang++ clang++-16 clang++-15 clang++-14)
if(TANDEM_CLANGXX AND TARGET tandem_train)
  execute_process(
    COMMAND ${TANDEM_CLANGXX} -fsanitize=fuzzer,address -x c++ - -o ${CMAKE_CURRENT_BINARY_DIR}/fuzz_probe
    INPUT_FILE ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/probe.cpp
    RESULT_VARIABLE probe_rc OUTPUT_QUIET ERROR_QUIET)
  if(probe_rc EQUAL 0)
    set(fuzz_bin ${CMAKE_CURRENT_BINARY_DIR}/tandem-fuzz-checkpoint)
    set(fuzz_sources ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_checkpoint.cpp ${PROJECT_SOURCE_DIR}/train/checkpoint.cpp
      ${PROJECT_SOURCE_DIR}/train/safetensors.cpp ${PROJECT_SOURCE_DIR}/train/atomic_file.cpp)
    add_custom_command(OUTPUT ${fuzz_bin}
      COMMAND ${TANDEM_CLANGXX} -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
        -I${PROJECT_SOURCE_DIR} -I${PROJECT_BINARY_DIR}/generated ${fuzz_sources}
        $<TARGET_FILE:tandem_engine> $<TARGET_FILE:tandem_kernels> -lz
        -Wl,-rpath,$<TARGET_FILE_DIR:tandem_engine>:$<TARGET_FILE_DIR:tandem_kernels> -o ${fuzz_bin}
      DEPENDS ${fuzz_sources} tandem_engine tandem_kernels
      COMMENT "Building the checkpoint fuzzer with clang (libFuzzer, ASan, UBSan)"
      VERBATIM)
    add_custom_target(tandem_fuzz_checkpoint ALL DEPENDS ${fuzz_bin})
    add_executable(tandem_fuzz_make_corpus fuzz/make_corpus.cpp)
    target_link_libraries(tandem_fuzz_make_corpus PRIVATE tandem_train)
    set(corpus ${CMAKE_CURRENT_BINARY_DIR}/fuzz_corpus)
    # 60 s of fuzzing from a valid checkpoint and safetensors file; any crash, leak,
    # sanitizer report or input slower than 10 s fails the test.
    add_test(NAME fuzz_checkpoint_loaders
      COMMAND sh -c "rm -rf \"$2\" && mkdir -p \"$2\" && \"$1\" \"$2\" && \"$0\" -max_total_time=${TANDEM_FUZZ_SECONDS} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \"$2\""
        ${fuzz_bin} $<TARGET_FILE:tandem_fuzz_make_corpus> ${corpus})
    set_tests_properties(fuzz_checkpoint_loaders PROPERTIES LABELS "cpu;fuzz" TIMEOUT 600)
  endif()
endif()
