// Tandem's public API in one include: tensors, autograd and ops (engine/), layers
// and models (layers/), optimizers (optim/), data sets and loaders (data/), process
// groups, launch, samplers, DataParallel, DistributedDataParallel and SyncBatchNorm
// (comm/), and training-loop helpers and the checkpoint format (train/).
#pragma once

#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/tensor.h"
#include "tandem/config.h"

#include "layers/activation.h"
#include "layers/checkpoint.h"
#include "layers/conv.h"
#include "layers/dropout.h"
#include "layers/embedding.h"
#include "layers/flatten.h"
#include "layers/linear.h"
#include "layers/models/cnn.h"
#include "layers/models/mlp.h"
#include "layers/models/resnet.h"
#include "layers/module.h"
#include "layers/norm.h"
#include "layers/pool.h"
#include "layers/sequential.h"

#include "optim/adam.h"
#include "optim/clip.h"
#include "optim/grad_scaler.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "optim/sgd.h"

#include "data/cifar10.h"
#include "data/dataloader.h"
#include "data/dataset.h"
#include "data/fashion_mnist.h"
#include "data/idx.h"
#include "data/sampler.h"
#include "data/synthetic.h"

#include "comm/data_parallel.h"
#include "comm/ddp.h"
#include "comm/launch.h"
#include "comm/local.h"
#include "comm/metrics.h"
#include "comm/process_group.h"
#include "comm/sampler.h"
#include "comm/store.h"
#include "comm/sync_batchnorm.h"

#include "train/checkpoint.h"
#include "train/metrics.h"
#include "train/progress.h"
#include "train/safetensors.h"
