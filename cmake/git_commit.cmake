# Writes OUT from IN with VERSION and the commit SOURCE_DIR is checked out at (GIT_COMMIT: 12
# hex digits, "-modified" when tracked files differ from it, "unknown" without git). Run at
# every build; configure_file leaves OUT untouched when nothing changed, so nothing rebuilds.
execute_process(COMMAND git rev-parse --short=12 HEAD
  WORKING_DIRECTORY ${SOURCE_DIR} RESULT_VARIABLE failed
  OUTPUT_VARIABLE GIT_COMMIT OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(failed OR NOT GIT_COMMIT)
  # No git, or git refusing the tree (another user's checkout, as under `sudo make install`):
  # keep the commit an earlier build recorded rather than turn it into "unknown".
  set(GIT_COMMIT "unknown")
  if(EXISTS ${OUT})
    file(STRINGS ${OUT} earlier REGEX "kGitCommit = \"[^\"]*\"")
    if(earlier MATCHES "kGitCommit = \"([^\"]*)\"")
      set(GIT_COMMIT "${CMAKE_MATCH_1}")
    endif()
  endif()
else()
  execute_process(COMMAND git diff --quiet HEAD --
    WORKING_DIRECTORY ${SOURCE_DIR} RESULT_VARIABLE modified OUTPUT_QUIET ERROR_QUIET)
  if(modified EQUAL 1)
    string(APPEND GIT_COMMIT "-modified")
  endif()
endif()
configure_file(${IN} ${OUT} @ONLY)
