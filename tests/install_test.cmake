# Installs the build into PREFIX and checks that the installed binary runs and that the
# shipped models and README land where `hemexp run` looks for them.
file(REMOVE_RECURSE "${PREFIX}")
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD}" --prefix "${PREFIX}" RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed: ${rc}")
endif()
execute_process(COMMAND "${PREFIX}/bin/hemexp" --version RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(NOT rc EQUAL 0 OR NOT out MATCHES "^hemexp ")
  message(FATAL_ERROR "installed hemexp --version: ${rc} ${out}")
endif()
foreach(f share/hemexp/models/README.md share/doc/hemexp/README.md)
  if(NOT EXISTS "${PREFIX}/${f}")
    message(FATAL_ERROR "not installed: ${f}")
  endif()
endforeach()
file(GLOB shipped "${SOURCE}/models/*.safetensors")
file(GLOB installed "${PREFIX}/share/hemexp/models/*.safetensors")
list(LENGTH shipped n_shipped)
list(LENGTH installed n_installed)
if(NOT n_shipped EQUAL n_installed)
  message(FATAL_ERROR "models: ${n_shipped} shipped, ${n_installed} installed")
endif()
# The same binary away from its models (a copied binary, a broken install): a setup error that
# names where it looked, not a cohort of empty masks; `--seg-model none` still runs.
set(BARE "${PREFIX}-bare")
file(REMOVE_RECURSE "${BARE}")
file(COPY "${PREFIX}/bin/hemexp" DESTINATION "${BARE}/bin")
set(SCAN "${SOURCE}/tests/data/edge/nibabel/standard.nii.gz")
set(ENV{HEMEXP_MODEL_DIR} "${BARE}/no-models-here")
execute_process(COMMAND "${BARE}/bin/hemexp" run -i "${SCAN}" -o "${BARE}/out1" --no-progress
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
get_filename_component(BARE_REAL "${BARE}" REALPATH)  # as /proc/self/exe names it
string(FIND "${err}" "no segmentation model found (looked in ${BARE}/no-models-here, ${BARE_REAL}/bin/models, " at)
if(NOT rc EQUAL 3 OR at EQUAL -1)
  message(FATAL_ERROR "hemexp without its models: exit ${rc}, ${err}")
endif()
if(EXISTS "${BARE}/out1")  # the models are resolved before OUTDIR is made
  message(FATAL_ERROR "hemexp without its models made its output folder")
endif()
execute_process(COMMAND "${BARE}/bin/hemexp" run -i "${SCAN}" -o "${BARE}/out2" --seg-model none --no-progress
                RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT EXISTS "${BARE}/out2/results.csv")  # the tiny file fails as a case (exit 4); the run itself goes on
  message(FATAL_ERROR "hemexp --seg-model none without models: exit ${rc}, ${err}")
endif()
file(REMOVE_RECURSE "${BARE}")
file(REMOVE_RECURSE "${PREFIX}")
