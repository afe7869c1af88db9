# The README's example program, built in the tree, trains for 200 steps; and the
# same source built as an outside project through find_package(Tandem) against a
# fresh install of this build.
add_test(NAME example_train_mlp COMMAND example_train_mlp ${TANDEM_FASHION_MNIST_DIR} 200)
set_tests_properties(example_train_mlp PROPERTIES LABELS "cpu;example"
  PASS_REGULAR_EXPRESSION "test accuracy 0\\.[6-9]")

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
