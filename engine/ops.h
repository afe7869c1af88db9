// Every op of the engine, by family (one header and one .cpp per family in engine/ops/).
#pragma once

#include "engine/ops/conv.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/factory.h"
#include "engine/ops/linalg.h"
#include "engine/ops/nn.h"
#include "engine/ops/pool.h"
#include "engine/ops/norm.h"
#include "engine/ops/reduce.h"
#include "engine/ops/shape.h"
