# scripts/plot-metrics turns a tandem-train metrics log into a PNG (when gnuplot and
# python3 are installed: scripts/setup installs both).
find_program(TANDEM_GNUPLOT gnuplot)
find_program(TANDEM_PYTHON3 python3)
if(TARGET tandem-train AND TANDEM_GNUPLOT AND TANDEM_PYTHON3)
  set(plot_dir ${CMAKE_CURRENT_BINARY_DIR}/plot_metrics)
  add_test(NAME plot_metrics_from_tandem_train
    COMMAND sh -c "mkdir -p \"$2\" && rm -f \"$2/m.png\" && \"$0\" --model mlp --dataset synthetic --synthetic-samples 256 --synthetic-shape 1,8,8 --epochs 3 --device cpu --metrics \"$2/m.jsonl\" >/dev/null 2>&1 && \"$1\" \"$2/m.jsonl\" \"$2/m.png\" && head -c 8 \"$2/m.png\" | od -An -c | grep -q 'P   N   G'"
      $<TARGET_FILE:tandem-train> ${PROJECT_SOURCE_DIR}/scripts/plot-metrics ${plot_dir})
  set_tests_properties(plot_metrics_from_tandem_train PROPERTIES LABELS "cpu;app")
  add_test(NAME plot_metrics_missing_file
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_command.sh 2 "nonexistent.jsonl: no such file" --
      ${PROJECT_SOURCE_DIR}/scripts/plot-metrics ${plot_dir}/nonexistent.jsonl ${plot_dir}/x.png)
  set_tests_properties(plot_metrics_missing_file PROPERTIES LABELS "cpu;app")
endif()
