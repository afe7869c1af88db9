# The README's example programs, built in the tree: the MLP trains for 200 steps, the
# GPT on a generated text; and the same sources built as an outside project through
# find_package(Tandem) against a fresh install of this build.
add_test(NAME example_train_mlp COMMAND example_train_mlp ${TANDEM_FASHION_MNIST_DIR} 200)
set_tests_properties(example_train_mlp PROPERTIES LABELS "cpu;example"
  PASS_REGULAR_EXPRESSION "test accuracy 0\\.[6-9]")

# The GPT example learns the test text's sentence and continues a prompt with it.
add_test(NAME example_train_gpt COMMAND example_train_gpt ${TANDEM_TEST_TEXT} 5 "line 7")
set_tests_properties(example_train_gpt PROPERTIES LABELS "cpu;example"
  PASS_REGULAR_EXPRESSION "accuracy 0\\.9.*\nline 7[0-9]*: the quick brown fox jumps over the lazy dog")

add_test(NAME find_package_outside_project
  COMMAND ${CMAKE_COMMAND}
    -DBUILD_DIR=${PROJECT_BINARY_DIR}
    -DSOURCE_DIR=${PROJECT_SOURCE_DIR}
    -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/outside-project
    -DDATA_DIR=${TANDEM_FASHION_MNIST_DIR}
    -DGENERATOR=${CMAKE_GENERATOR}
    -P ${PROJECT_SOURCE_DIR}/tests/outside_project.cmake)
set_tests_properties(find_package_outside_project PROPERTIES LABELS "cpu;example" TIMEOUT 900
  PASS_REGULAR_EXPRESSION "test accuracy 0\\.[6-9]")
