# CMake generated Testfile for 
# Source directory: /work/main
# Build directory: /work/main/build
# 
# This file includes the relevant testing commands required for 
# testing this directory and lists subdirectories to be tested as well.
include("/work/main/build/test_core[1]_include.cmake")
include("/work/main/build/test_io[1]_include.cmake")
include("/work/main/build/test_app[1]_include.cmake")
add_test(cli_version "/work/main/build/hemexp" "--version")
set_tests_properties(cli_version PROPERTIES  PASS_REGULAR_EXPRESSION "^hemexp 0.1.0" _BACKTRACE_TRIPLES "/work/main/CMakeLists.txt;104;add_test;/work/main/CMakeLists.txt;0;")
add_test(cli_help "/work/main/build/hemexp" "--help")
set_tests_properties(cli_help PROPERTIES  PASS_REGULAR_EXPRESSION "run" _BACKTRACE_TRIPLES "/work/main/CMakeLists.txt;106;add_test;/work/main/CMakeLists.txt;0;")
add_test(cli_unknown_flag "/work/main/build/hemexp" "run" "--no-such-flag")
set_tests_properties(cli_unknown_flag PROPERTIES  WILL_FAIL "TRUE" _BACKTRACE_TRIPLES "/work/main/CMakeLists.txt;108;add_test;/work/main/CMakeLists.txt;0;")
