// The one Catch2 main translation unit of each build flavour (see Makefile).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
