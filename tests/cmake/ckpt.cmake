# tandem-ckpt: import a safetensors file written by PyTorch, inspect and verify the
# checkpoint, export it back, and fail with status 1 and the tensor named on damage.
if(TARGET tandem-ckpt)
  set(check ${CMAKE_CURRENT_SOURCE_DIR}/check_command.sh)
  set(ck_dir ${CMAKE_CURRENT_BINARY_DIR}/ckpt_cli)
  set(ck ${ck_dir}/weights.tck)
  add_test(NAME tandem_ckpt_setup COMMAND ${CMAKE_COMMAND} -E make_directory ${ck_dir})
  add_test(NAME tandem_ckpt_import
    COMMAND ${check} 0 "wrote .*weights.tck: 9 tensors" -- $<TARGET_FILE:tandem-ckpt>
      import --safetensors ${CMAKE_CURRENT_SOURCE_DIR}/fixtures/torch.safetensors --prefix model. ${ck})
  add_test(NAME tandem_ckpt_info
    COMMAND ${check} 0 "model\\.fc\\.weight +float32 +\\[3, 4\\] +48 " -- $<TARGET_FILE:tandem-ckpt> info ${ck})
  add_test(NAME tandem_ckpt_verify
    COMMAND ${check} 0 "OK \\(format version 1, 9 tensors" -- $<TARGET_FILE:tandem-ckpt> verify ${ck})
  add_test(NAME tandem_ckpt_export
    COMMAND ${check} 0 "wrote .*out.safetensors: 9 tensors" -- $<TARGET_FILE:tandem-ckpt>
      export --safetensors ${ck_dir}/out.safetensors ${ck})
  add_test(NAME tandem_ckpt_export_nothing_selected
    COMMAND ${check} 1 "start with .optimizer\\.. in .*got none" -- $<TARGET_FILE:tandem-ckpt>
      export --select optimizer. --safetensors ${ck_dir}/none.safetensors ${ck})
  add_test(NAME tandem_ckpt_verify_missing
    COMMAND ${check} 1 "nonexistent.tck: cannot open" -- $<TARGET_FILE:tandem-ckpt> verify ${ck_dir}/nonexistent.tck)
  # Not a checkpoint at all: the safetensors file itself.
  add_test(NAME tandem_ckpt_verify_wrong_file
    COMMAND ${check} 1 "not a Tandem checkpoint" -- $<TARGET_FILE:tandem-ckpt>
      verify ${CMAKE_CURRENT_SOURCE_DIR}/fixtures/torch.safetensors)
  set_tests_properties(tandem_ckpt_setup PROPERTIES FIXTURES_SETUP ckpt_dir LABELS "cpu;app")
  set_tests_properties(tandem_ckpt_import PROPERTIES FIXTURES_SETUP ckpt_file FIXTURES_REQUIRED ckpt_dir LABELS "cpu;app")
  set_tests_properties(tandem_ckpt_info tandem_ckpt_verify tandem_ckpt_export tandem_ckpt_export_nothing_selected
    PROPERTIES FIXTURES_REQUIRED "ckpt_dir;ckpt_file" LABELS "cpu;app")
  set_tests_properties(tandem_ckpt_verify_missing tandem_ckpt_verify_wrong_file PROPERTIES LABELS "cpu;app")
endif()
