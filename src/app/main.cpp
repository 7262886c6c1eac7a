#include "hemexp/app/cli.hpp"

int main(int argc, char** argv) { return hemexp::main_entry(argc, argv); }
