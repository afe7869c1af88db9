# Finds Tandem's third-party dependencies: the system packages first and, for each one
# missing, the copy scripts/pack-deps put in .deps/ (for the GPU test machine, which
# has no package manager). Defines the imported targets the libraries link against.
# Included once from the top-level CMakeLists.txt, after the options.

set(TANDEM_DEPS_DIR "${PROJECT_SOURCE_DIR}/.deps" CACHE PATH
  "Folder filled by scripts/pack-deps, used for dependencies the system lacks")
# ON takes every dependency that has a copy in .deps/ from there, never from the
# system: how a development machine checks what the GPU machine will see.
option(TANDEM_DEPS_FROM_DOTDEPS "Take dependencies from .deps/ only (skip system packages)" OFF)

set(TANDEM_DEPS_USED "")  # names of the dependencies taken from .deps/, for the summary

# Sets <out> to .deps/<part>, or stops with a message naming `what` and the fix.
function(tandem_dotdeps_dir out part what)
  set(dir "${TANDEM_DEPS_DIR}/${part}")
  if(NOT EXISTS "${dir}")
    message(FATAL_ERROR "[TandemDeps] expected ${what} installed on the system or in ${dir}, "
      "got neither (install it with scripts/setup, or run scripts/pack-deps on a machine that has it)")
  endif()
  set(${out} "${dir}" PARENT_SCOPE)
endfunction()

# find_package(<args>) unless TANDEM_DEPS_FROM_DOTDEPS says to skip the system.
macro(tandem_find_system)
  if(NOT TANDEM_DEPS_FROM_DOTDEPS)
    find_package(${ARGN})
  endif()
endmacro()

find_package(Threads REQUIRED)

# ---- zlib ------------------------------------------------------------------------
tandem_find_system(ZLIB)
if(NOT TARGET ZLIB::ZLIB)
  tandem_dotdeps_dir(_dep zlib "zlib (zlib.h and libz)")
  # The shared library under its soname: the system's libz.so.1 (present on any
  # Linux, headers or not) is interchangeable with it at run time.
  add_library(ZLIB::ZLIB SHARED IMPORTED)
  set_target_properties(ZLIB::ZLIB PROPERTIES
    IMPORTED_LOCATION "${_dep}/lib/libz.so.1"
    IMPORTED_SONAME "libz.so.1"
    INTERFACE_INCLUDE_DIRECTORIES "${_dep}/include")
  list(APPEND TANDEM_DEPS_USED zlib)
endif()

# ---- Eigen (header-only) -------------------------------------------------------------
tandem_find_system(Eigen3 3.3 NO_MODULE)
if(NOT TARGET Eigen3::Eigen)
  tandem_dotdeps_dir(_dep eigen3 "Eigen 3.3+")
  add_library(Eigen3::Eigen INTERFACE IMPORTED)
  set_target_properties(Eigen3::Eigen PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_dep}")
  list(APPEND TANDEM_DEPS_USED Eigen)
endif()

# ---- nlohmann-json (header-only) -------------------------------------------------------
tandem_find_system(nlohmann_json 3)
if(NOT TARGET nlohmann_json::nlohmann_json)
  tandem_dotdeps_dir(_dep nlohmann_json "nlohmann-json 3")
  add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
  set_target_properties(nlohmann_json::nlohmann_json PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_dep}/include")
  list(APPEND TANDEM_DEPS_USED nlohmann_json)
endif()

# ---- CLI11 (header-only; Debian ships a config without a target on some releases) -----
tandem_find_system(CLI11 CONFIG QUIET)
if(NOT TARGET CLI11::CLI11)
  if(NOT TANDEM_DEPS_FROM_DOTDEPS)
    find_path(CLI11_INCLUDE_DIR CLI/CLI.hpp)
  endif()
  if(NOT CLI11_INCLUDE_DIR)
    tandem_dotdeps_dir(_dep cli11 "CLI11 (CLI/CLI.hpp)")
    set(CLI11_INCLUDE_DIR "${_dep}/include")
    list(APPEND TANDEM_DEPS_USED CLI11)
  endif()
  add_library(CLI11::CLI11 INTERFACE IMPORTED)
  target_include_directories(CLI11::CLI11 INTERFACE ${CLI11_INCLUDE_DIR})
endif()

# ---- Gloo (never carried: it needs libibverbs, libhiredis and libnl) --------------------
if(NOT TANDEM_GLOO STREQUAL "OFF")
  tandem_find_system(Gloo QUIET)
endif()
if(NOT Gloo_FOUND)
  set(Gloo_FOUND OFF)
endif()

# ---- GoogleTest (built from the carried sources with this machine's compiler) ----------
if(TANDEM_BUILD_TESTS)
  tandem_find_system(GTest)
  if(NOT TARGET GTest::gtest)
    tandem_dotdeps_dir(_dep googletest "GoogleTest")
    set(BUILD_GMOCK OFF)
    set(INSTALL_GTEST OFF)
    set(CMAKE_POLICY_VERSION_MINIMUM 3.5)  # googletest 1.12 asks for 3.5; CMake 4 refuses less
    set(BUILD_SHARED_LIBS OFF)              # static gtest, as Debian's, whatever Tandem uses
    set(_dep_system "")
    if(CMAKE_VERSION VERSION_GREATER_EQUAL 3.25)
      set(_dep_system SYSTEM)                    # its headers then warn no more than Debian's
    endif()
    add_subdirectory("${_dep}" "${PROJECT_BINARY_DIR}/_deps/googletest" EXCLUDE_FROM_ALL ${_dep_system})
    unset(BUILD_SHARED_LIBS)                # back to the cache option
    unset(CMAKE_POLICY_VERSION_MINIMUM)
    list(APPEND TANDEM_DEPS_USED GoogleTest)
  endif()
endif()

# ---- Google Benchmark (prebuilt shared library; skipped when it cannot link here) -------
if(TANDEM_BUILD_BENCH)
  tandem_find_system(benchmark)
  if(NOT TARGET benchmark::benchmark)
    tandem_dotdeps_dir(_dep benchmark "Google Benchmark")
    file(STRINGS "${_dep}/lib/SONAME" _dep_soname LIMIT_COUNT 1)
    set(_dep_lib "${_dep}/lib/${_dep_soname}")
    # The carried library was built on the development machine; an older C++ runtime
    # here (GLIBCXX) fails to link it. Check once, and build without bench/ then.
    set(_dep_check_src "${PROJECT_BINARY_DIR}/_deps/benchmark_check.cpp")
    file(WRITE "${_dep_check_src}"
      "#include <benchmark/benchmark.h>\n"
      "int main(int argc, char** argv) { benchmark::Initialize(&argc, argv); return 0; }\n")
    try_compile(TANDEM_DOTDEPS_BENCHMARK_LINKS "${PROJECT_BINARY_DIR}/_deps/benchmark_check"
      SOURCES "${_dep_check_src}"
      CMAKE_FLAGS "-DINCLUDE_DIRECTORIES=${_dep}/include"
      LINK_LIBRARIES "${_dep_lib}" Threads::Threads
      OUTPUT_VARIABLE _dep_check_output)
    if(TANDEM_DOTDEPS_BENCHMARK_LINKS)
      add_library(benchmark::benchmark SHARED IMPORTED)
      set_target_properties(benchmark::benchmark PROPERTIES
        IMPORTED_LOCATION "${_dep_lib}"
        IMPORTED_SONAME "${_dep_soname}"
        INTERFACE_INCLUDE_DIRECTORIES "${_dep}/include"
        INTERFACE_LINK_LIBRARIES Threads::Threads)
      list(APPEND TANDEM_DEPS_USED benchmark)
    else()
      message(WARNING "[TandemDeps] expected ${_dep_lib} to link with this compiler, got a failure; "
        "building without bench/ (TANDEM_BUILD_BENCH=OFF). Linker output:\n${_dep_check_output}")
      set(TANDEM_BUILD_BENCH OFF)
    endif()
  endif()
endif()

# ---- Fashion-MNIST, for the tests and examples that train on it ------------------------
set(_tandem_fmnist_default /usr/share/datasets/fashion-mnist)
if(EXISTS "${TANDEM_DEPS_DIR}/data/fashion-mnist" AND
   (TANDEM_DEPS_FROM_DOTDEPS OR NOT EXISTS "${_tandem_fmnist_default}"))
  set(_tandem_fmnist_default "${TANDEM_DEPS_DIR}/data/fashion-mnist")
endif()
set(TANDEM_FASHION_MNIST_DIR "${_tandem_fmnist_default}" CACHE PATH
  "Folder holding the four Fashion-MNIST .gz files (tests and examples)")
unset(_tandem_fmnist_default)

if(TANDEM_DEPS_USED)
  string(REPLACE ";" " " _used "${TANDEM_DEPS_USED}")
  message(STATUS "Tandem: from ${TANDEM_DEPS_DIR}: ${_used}")
  unset(_used)
endif()
message(STATUS "Tandem: Fashion-MNIST in ${TANDEM_FASHION_MNIST_DIR}")
