# bench_collectives: time, algorithm and bus bandwidth of Tandem's collectives
# (local, gloo, nccl backends) and Gloo-through-Tandem against Gloo called directly.
# A plain program (its gloo mode runs one process per rank under tandemrun), so it
# does not use Google Benchmark. Included from bench/CMakeLists.txt.
add_executable(bench_collectives ${CMAKE_CURRENT_LIST_DIR}/bench_collectives.cpp)
target_link_libraries(bench_collectives PRIVATE tandem CLI11::CLI11 nlohmann_json::nlohmann_json)
if(TANDEM_GLOO)
  # The direct-Gloo comparison calls gloo::allreduce itself.
  target_link_libraries(bench_collectives PRIVATE gloo)
endif()
