file(REMOVE_RECURSE
  "libhemexp_core.a"
)
