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
      -- sh -c "rm -f \"$1\" && \"$0\" scaling --model mlp --ranks 1,2 --steps 3 --warmup 1 --backend ${bench_backend} --json \"$1\" --csv '' && cat \"$1\""
      $<TARGET_FILE:tandem-bench> ${bench_json})
  set_tests_properties(tandem_bench_scaling_smoke PROPERTIES LABELS "cpu;bench" TIMEOUT 60)
endif()
