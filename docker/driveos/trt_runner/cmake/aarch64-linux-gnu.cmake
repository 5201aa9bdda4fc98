# Cross-compile for 64-bit Arm Linux with a GNU toolchain named aarch64-linux-gnu-*
# (Debian/Ubuntu: g++-aarch64-linux-gnu; the DriveOS PDK image ships one of its own: point
# TRT_RUNNER_CROSS_PREFIX at it, e.g. /drive/toolchains/aarch64--glibc--stable-2022.03-1/bin/aarch64-linux-).
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

if(NOT DEFINED TRT_RUNNER_CROSS_PREFIX)
  if(DEFINED ENV{TRT_RUNNER_CROSS_PREFIX})
    set(TRT_RUNNER_CROSS_PREFIX "$ENV{TRT_RUNNER_CROSS_PREFIX}")
  else()
    set(TRT_RUNNER_CROSS_PREFIX "aarch64-linux-gnu-")
  endif()
endif()
set(CMAKE_C_COMPILER "${TRT_RUNNER_CROSS_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${TRT_RUNNER_CROSS_PREFIX}g++")
# try_compile() runs in a fresh project: hand it the prefix.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES TRT_RUNNER_CROSS_PREFIX)

# Libraries and headers come from the target's root; programs (cmake, the compiler) from the host.
if(DEFINED TRT_RUNNER_SYSROOT)
  set(CMAKE_SYSROOT "${TRT_RUNNER_SYSROOT}")
endif()
set(CMAKE_FIND_ROOT_PATH "/usr/aarch64-linux-gnu")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
