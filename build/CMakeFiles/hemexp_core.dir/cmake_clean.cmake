file(REMOVE_RECURSE
  "CMakeFiles/hemexp_core.dir/src/core/geometry.cpp.o"
  "CMakeFiles/hemexp_core.dir/src/core/geometry.cpp.o.d"
  "CMakeFiles/hemexp_core.dir/src/core/orientation.cpp.o"
  "CMakeFiles/hemexp_core.dir/src/core/orientation.cpp.o.d"
  "CMakeFiles/hemexp_core.dir/src/core/slice_stack.cpp.o"
  "CMakeFiles/hemexp_core.dir/src/core/slice_stack.cpp.o.d"
  "libhemexp_core.a"
  "libhemexp_core.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang CXX)
  include(CMakeFiles/hemexp_core.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
