
# Consider dependencies only in project.
set(CMAKE_DEPENDS_IN_PROJECT_ONLY OFF)

# The set of languages for which implicit dependencies are needed:
set(CMAKE_DEPENDS_LANGUAGES
  )

# The set of dependency files which are needed:
set(CMAKE_DEPENDS_DEPENDENCY_FILES
  "/work/main/src/core/geometry.cpp" "CMakeFiles/hemexp_core.dir/src/core/geometry.cpp.o" "gcc" "CMakeFiles/hemexp_core.dir/src/core/geometry.cpp.o.d"
  "/work/main/src/core/orientation.cpp" "CMakeFiles/hemexp_core.dir/src/core/orientation.cpp.o" "gcc" "CMakeFiles/hemexp_core.dir/src/core/orientation.cpp.o.d"
  "/work/main/src/core/slice_stack.cpp" "CMakeFiles/hemexp_core.dir/src/core/slice_stack.cpp.o" "gcc" "CMakeFiles/hemexp_core.dir/src/core/slice_stack.cpp.o.d"
  )

# Targets to which this target links.
set(CMAKE_TARGET_LINKED_INFO_FILES
  )

# Fortran module output directory.
set(CMAKE_Fortran_TARGET_MODULE_DIR "")
