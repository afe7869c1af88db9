# The scaling model (bench/scaling_model.cpp) is plain arithmetic: its test binary,
# discovered by tests/CMakeLists.txt, compiles the source itself, so it runs whether or
# not the benchmarks are built.
target_sources(test_scaling_model PRIVATE ${PROJECT_SOURCE_DIR}/bench/scaling_model.cpp)

# tandem-bench: a quick `scaling` sweep (MLP, DDP over 1 and 2 ranks, 3 steps) writes
# its JSON with a row per rank count. Benchmarks are built in CI (TANDEM_BUILD_BENCH is
# on by default); bench/ is added after tests/, so the check is on the option, not the target.
if(TANDEM_BUILD_BENCH)
  if(TANDEM_GLOO)
    set(bench_backend gloo)
  else()
    set(bench_backend local)
  endif()
  set(bench_json ${CMAKE_CURRENT_BINARY_DIR}/tandem_bench_scaling_smoke.json)
  add_test(NAME tandem_bench_scaling_smoke
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_command.sh 0 "^ *\"ranks\": 2,$"
      -- sh -c "rm -f \"$1\" && \"$0\" scaling --model mlp --ranks 1,2 --steps 3 --warmup 1 --backend ${bench_backend} --json \"$1\" --csv '' --png '' && cat \"$1\""
      $<TARGET_FILE:tandem-bench> ${bench_json})
  set_tests_properties(tandem_bench_scaling_smoke PROPERTIES LABELS "cpu;bench" TIMEOUT 60)

  # The issue 8 acceptance shape, shortened: CNN over 1 and 2 ranks writes its PNG
  # (when gnuplot is installed), and the modelled links need no extra processes.
  find_program(TANDEM_GNUPLOT gnuplot)
  if(TANDEM_GNUPLOT)
    set(bench_png ${CMAKE_CURRENT_BINARY_DIR}/tandem_bench_scaling_smoke.png)
    add_test(NAME tandem_bench_scaling_png
      COMMAND sh -c "rm -f \"$1\" && \"$0\" scaling --model cnn --ranks 1,2 --steps 3 --warmup 1 --backend ${bench_backend} --json '' --csv '' --png \"$1\" && test -s \"$1\" && head -c 8 \"$1\" | grep -q PNG"
        $<TARGET_FILE:tandem-bench> ${bench_png})
    set_tests_properties(tandem_bench_scaling_png PROPERTIES LABELS "cpu;bench" TIMEOUT 120)
  endif()
  add_test(NAME tandem_bench_scaling_model_links
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_command.sh 0 "nvlink4 +370.0 +5.0 +overlap +64 "
      -- $<TARGET_FILE:tandem-bench> scaling --model mlp --model-links nvlink4,pcie5,ib200 --ranks 2,8,64
        --steps 3 --warmup 1 --backend ${bench_backend} --json ${CMAKE_CURRENT_BINARY_DIR}/tandem_bench_model_links.json
        --csv ${CMAKE_CURRENT_BINARY_DIR}/tandem_bench_model_links.csv --png ${CMAKE_CURRENT_BINARY_DIR}/tandem_bench_model_links.png)
  set_tests_properties(tandem_bench_scaling_model_links PROPERTIES LABELS "cpu;bench" TIMEOUT 60)

  # strategies with DDP ranks as threads (--backend local: how two ranks share one GPU).
  add_test(NAME tandem_bench_strategies_local
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_command.sh 0 "ddp x2 +2 +16 "
      -- $<TARGET_FILE:tandem-bench> strategies --model mlp --global-batch 32 --devices 2 --steps 3 --warmup 1
        --backend local --json '' --csv '')
  set_tests_properties(tandem_bench_strategies_local PROPERTIES LABELS "cpu;bench" TIMEOUT 60)

  # The GPTs' token batches through every strategy: single, DataParallel (scattering
  # int64 sequences) and DDP, on gpt-mini with 2 sequences per step.
  add_test(NAME tandem_bench_strategies_gpt
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_command.sh 0 "ddp x2 +2 +1 "
      -- $<TARGET_FILE:tandem-bench> strategies --model gpt-mini --global-batch 2 --devices 2 --steps 1 --warmup 1
        --backend local --json '' --csv '')
  set_tests_properties(tandem_bench_strategies_gpt PROPERTIES LABELS "cpu;bench" TIMEOUT 120)

  # tandem-compare: --unfused runs Linear + ReLU as two ops (and says so in its JSON);
  # --cuda-graph refuses what it cannot replay, naming what it expects.
  add_test(NAME tandem_compare_unfused
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_command.sh 0 "\"fused_activations\":false"
      -- $<TARGET_FILE:tandem-compare> --model mlp --max-batches 5 --unfused --data ${TANDEM_FASHION_MNIST_DIR})
  set_tests_properties(tandem_compare_unfused PROPERTIES LABELS "cpu;bench" TIMEOUT 120)
  add_test(NAME tandem_compare_cuda_graph_needs_cuda
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_command.sh 1 "--cuda-graph expects a CUDA device"
      -- $<TARGET_FILE:tandem-compare> --model mlp --cuda-graph --data ${TANDEM_FASHION_MNIST_DIR})
  set_tests_properties(tandem_compare_cuda_graph_needs_cuda PROPERTIES LABELS "cpu;bench" TIMEOUT 60)

  # The emulated device (--emulate-step-ms): ranks wait instead of computing, and the
  # 2-rank row carries the model's prediction from the 1-rank profile.
  set(bench_json ${CMAKE_CURRENT_BINARY_DIR}/tandem_bench_scaling_emulated.json)
  add_test(NAME tandem_bench_scaling_emulated
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_command.sh 0 "\"model_1rank\""
      -- sh -c "rm -f \"$1\" && \"$0\" scaling --model cnn --ranks 1,2 --steps 4 --warmup 1 --overlap on --emulate-step-ms 20 --backend ${bench_backend} --json \"$1\" --csv '' --png '' | grep -q 'emulated device: cnn' && cat \"$1\""
      $<TARGET_FILE:tandem-bench> ${bench_json})
  set_tests_properties(tandem_bench_scaling_emulated PROPERTIES LABELS "cpu;bench" TIMEOUT 120)
  add_test(NAME tandem_bench_scaling_emulated_needs_ddp
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_command.sh 1 "--emulate-step-ms expects --strategy ddp and --precision fp32 .*got --strategy dp"
      -- $<TARGET_FILE:tandem-bench> scaling --model cnn --strategy dp --ranks 1 --emulate-step-ms 20 --json '' --csv '' --png '')
  set_tests_properties(tandem_bench_scaling_emulated_needs_ddp PROPERTIES LABELS "cpu;bench" TIMEOUT 60)
endif()

# The emulated device of `tandem-bench scaling --emulate-step-ms` (bench/emulated_device.cpp),
# compiled into its test binary like the scaling model.
target_sources(test_emulated_device PRIVATE ${PROJECT_SOURCE_DIR}/bench/emulated_device.cpp)
