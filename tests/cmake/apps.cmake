# tandem-train: a full epoch on the CPU reaches the accuracy the README promises,
# and every bad flag or missing file gets a one-line error and a non-zero exit.
if(TARGET tandem-train)
  set(check ${CMAKE_CURRENT_SOURCE_DIR}/check_command.sh)
  set(metrics ${CMAKE_CURRENT_BINARY_DIR}/tandem_train_metrics.jsonl)
  add_test(NAME tandem_train_mlp_one_epoch_cpu
    COMMAND ${check} 0 "\"test_acc\":0\\.(8[2-9]|9)" -- $<TARGET_FILE:tandem-train>
      --model mlp --epochs 1 --device cpu --data ${TANDEM_FASHION_MNIST_DIR} --metrics ${metrics})
  set_tests_properties(tandem_train_mlp_one_epoch_cpu PROPERTIES LABELS "cpu;app" TIMEOUT 600)
  # Issue acceptance: the CNN reaches 0.88 in two epochs on the CPU.
  add_test(NAME tandem_train_cnn_two_epochs_cpu
    COMMAND ${check} 0 "\"test_acc\":0\\.(8[89]|9)" -- $<TARGET_FILE:tandem-train>
      --model cnn --epochs 2 --device cpu --data ${TANDEM_FASHION_MNIST_DIR})
  set_tests_properties(tandem_train_cnn_two_epochs_cpu PROPERTIES LABELS "cpu;app" TIMEOUT 900)
  # Every optimizer and schedule runs end to end (a short synthetic run).
  foreach(combo "adam|cosine|--warmup-steps 5" "adamw|step|--warmup-epochs 1" "sgd|cosine|--clip-grad-norm 1")
    string(REPLACE "|" ";" parts "${combo}")
    list(GET parts 0 opt)
    list(GET parts 1 sched)
    list(GET parts 2 extra)
    separate_arguments(extra)
    add_test(NAME tandem_train_synthetic_${opt}_${sched}
      COMMAND ${check} 0 "\"optimizer\":\"${opt}\"" -- $<TARGET_FILE:tandem-train>
        --model cnn --dataset synthetic --synthetic-samples 512 --synthetic-shape 3,16,16 --batch-size 64
        --epochs 2 --optimizer ${opt} --schedule ${sched} ${extra} --device cpu)
    set_tests_properties(tandem_train_synthetic_${opt}_${sched} PROPERTIES LABELS "cpu;app")
  endforeach()
  # --tf32 is accepted everywhere and reported (it changes nothing on the CPU).
  add_test(NAME tandem_train_tf32_flag
    COMMAND ${check} 0 "\"tf32\":true" -- $<TARGET_FILE:tandem-train>
      --model mlp --dataset synthetic --synthetic-samples 256 --batch-size 64 --epochs 1 --tf32 --device cpu)
  set_tests_properties(tandem_train_tf32_flag PROPERTIES LABELS "cpu;app")

  # A character-level GPT on TANDEM_TEST_TEXT (400 numbered lines of one sentence): it
  # learns the sentence in three epochs, alone and as two DDP ranks (local backend, bf16,
  # activation checkpointing), and greedy sampling writes it back.
  set(fox_text ${TANDEM_TEST_TEXT})
  set(gpt_flags --model gpt-mini --dataset text --data ${fox_text} --n-layer 2 --n-head 2 --n-embd 64 --block-size 64
    --optimizer adamw --lr 3e-3 --epochs 3 --temperature 0 --sample-tokens 120 --device cpu)
  add_test(NAME tandem_train_gpt_text_cpu
    COMMAND ${check} 0 "\"test_acc\":0\\.[89].*quick brown fox jumps" -- $<TARGET_FILE:tandem-train> ${gpt_flags}
      --batch-size 16)
  add_test(NAME tandem_train_gpt_text_ddp_local
    COMMAND ${check} 0 "\"world_size\":2.*\"test_acc\":0\\.[89].*quick brown fox" -- $<TARGET_FILE:tandem-train>
      ${gpt_flags} --batch-size 8 --strategy ddp --backend local --devices 2 --precision bf16 --grad-checkpoint)
  # Tokens are bytes: a UTF-8 text whose test split starts inside a character (byte 911
  # of 1013 is the second byte of an "é") samples bytes that are not valid UTF-8; the
  # JSON line must still be written (with U+FFFD for them).
  string(REPEAT "é" 505 accents)
  set(utf8_text ${CMAKE_CURRENT_BINARY_DIR}/utf8_split_mid_character.txt)
  file(WRITE ${utf8_text} "ab${accents}\n")
  add_test(NAME tandem_train_gpt_text_utf8
    COMMAND ${check} 0 "\"sample\":\"" -- $<TARGET_FILE:tandem-train> --model gpt-mini --dataset text
      --data ${utf8_text} --n-layer 1 --n-head 1 --n-embd 16 --block-size 16 --batch-size 16 --epochs 1
      --sample-tokens 50 --device cpu)
  set_tests_properties(tandem_train_gpt_text_cpu tandem_train_gpt_text_ddp_local tandem_train_gpt_text_utf8
    PROPERTIES LABELS "cpu;app")

  set(bad_flags
    "epochs_zero|--epochs 0|--epochs: expected a value > 0, got 0"
    "negative_lr|--lr -1|--lr: expected a value > 0, got -1"
    "momentum_one|--momentum 1|--momentum: expected a value in .0, 1., got 1"
    "batch_not_a_number|--batch-size abc|--batch-size: expected a number"
    "unknown_flag|--bogus|--bogus"
    "unknown_model|--model resnet|--model: resnet not in"
    "bad_device|--device gpu|expected \"cpu\", \"cuda\" or \"cuda:N\", got \"gpu\""
    "missing_data|--data /nonexistent/fashion|--data /nonexistent/fashion: no such directory"
    "missing_file|--data ${CMAKE_CURRENT_SOURCE_DIR}|train-images-idx3-ubyte"
    "unwritable_metrics|--metrics /nonexistent/dir/m.jsonl|cannot open /nonexistent/dir/m.jsonl"
    "unknown_optimizer|--optimizer lamb|--optimizer: lamb not in"
    "unknown_schedule|--schedule poly|--schedule: poly not in"
    "two_warmups|--warmup-epochs 1 --warmup-steps 10|excludes"
    "momentum_with_adam|--optimizer adam --momentum 0.5|--momentum applies to --optimizer sgd only"
    "missing_cifar|--dataset cifar10 --data /nonexistent/cifar|--data /nonexistent/cifar: no such directory"
    "bad_synthetic_shape|--dataset synthetic --synthetic-shape 3,x,4|--synthetic-shape: expected C,H,W"
    "warmup_too_long|--dataset synthetic --synthetic-samples 256 --schedule cosine --warmup-epochs 1|must be shorter than the run"
    # Multi-device flags.
    "unknown_strategy|--strategy fsdp|--strategy: fsdp not in"
    "unknown_backend|--strategy ddp --backend mpi|--backend: mpi not in"
    "devices_zero|--strategy ddp --devices 0|--devices: expected an integer >= 1, got 0"
    "devices_with_single|--devices 2|--devices applies to --strategy dp or ddp, got --strategy single"
    "backend_with_dp|--strategy dp --devices 2 --backend gloo|--backend applies to --strategy ddp only, got --strategy dp"
    "sync_bn_with_single|--sync-bn|--sync-bn applies to --strategy ddp only, got --strategy single"
    "scale_lr_with_dp|--strategy dp --devices 2 --scale-lr linear|--scale-lr applies to --strategy ddp only, got --strategy dp"
    "unknown_scale_lr|--strategy ddp --scale-lr sqrt|--scale-lr: sqrt not in"
    "bucket_cap_zero|--strategy ddp --bucket-cap-mb 0|--bucket-cap-mb: expected a value > 0, got 0"
    "static_graph_with_single|--static-graph|--static-graph applies to --strategy ddp only"
    "dp_cpu_without_devices|--strategy dp --device cpu|--strategy dp on the CPU needs --devices N"
    "ddp_device_index|--strategy ddp --device cuda:1|--device cuda:1: with --strategy ddp every rank or replica picks its own GPU. expected auto, cpu or cuda"
    "nccl_on_cpu|--strategy ddp --devices 2 --backend nccl --device cpu|--backend nccl"
    "ddp_missing_data|--strategy ddp --devices 2 --data /nonexistent/fashion|--data /nonexistent/fashion: no such directory"
    # Precision, accumulation, checkpoints.
    "unknown_precision|--precision fp8|--precision: fp8 not in"
    "accumulate_zero|--accumulate 0|--accumulate: expected a value > 0, got 0"
    "resume_auto_without_dir|--resume auto|--resume auto needs --checkpoint-dir"
    "resume_missing_file|--resume /nonexistent/ckpt.tck|--resume /nonexistent/ckpt.tck: no such checkpoint file"
    "checkpoint_every_without_dir|--checkpoint-every 10|--checkpoint-every needs --checkpoint-dir"
    "cuda_graph_on_cpu|--cuda-graph --device cpu|--cuda-graph replays CUDA graphs: expected a GPU .--device cuda or auto., got cpu"
    # Language models.
    "gpt_without_text|--model gpt-mini|--model gpt-mini is a language model: expected --dataset text, got --dataset fashion-mnist"
    "text_without_gpt|--dataset text --data ${fox_text}|--dataset text trains a language model: expected --model gpt-mini or gpt2, got --model cnn"
    "text_without_data|--model gpt2 --dataset text|--dataset text needs --data FILE"
    "text_missing_file|--model gpt-mini --dataset text --data /nonexistent/t.txt|--data /nonexistent/t.txt: no such file"
    "gpt_flag_on_cnn|--block-size 64|--block-size applies to --model gpt-mini or gpt2 only"
    "embd_not_multiple_of_heads|--model gpt-mini --dataset text --data ${fox_text} --n-head 5|--n-embd 384 must be a multiple of --n-head 5"
    "block_longer_than_split|--model gpt-mini --dataset text --data ${fox_text} --block-size 4000|test split of .* block_size . 1 = 4001")
  foreach(entry ${bad_flags})
    string(REPLACE "|" ";" parts "${entry}")
    list(GET parts 0 name)
    list(GET parts 1 flags)
    list(GET parts 2 regex)
    separate_arguments(flags)
    # Errors before training exit with 2; errors while loading data or opening files with 1.
    if(name MATCHES "^(missing_file|unwritable_metrics|block_longer_than_split)$")
      set(status 1)
    else()
      set(status 2)
    endif()
    add_test(NAME tandem_train_error_${name}
      COMMAND ${check} ${status} "^tandem-train: error: .*${regex}" --one-line -- $<TARGET_FILE:tandem-train> ${flags})
    set_tests_properties(tandem_train_error_${name} PROPERTIES LABELS "cpu;app")
  endforeach()
  # Under a launcher's environment, --devices must match its world size, and local
  # threads cannot join its processes.
  add_test(NAME tandem_train_error_devices_differ_from_launcher
    COMMAND ${check} 2 "^tandem-train: error: --devices 3 does not match the launcher's world size 2 .torchrun." --one-line
      -- $<TARGET_FILE:tandem-train> --strategy ddp --devices 3)
  add_test(NAME tandem_train_error_local_backend_under_launcher
    COMMAND ${check} 2 "^tandem-train: error: --backend local runs ranks as threads of one process" --one-line
      -- $<TARGET_FILE:tandem-train> --strategy ddp --backend local)
  set_tests_properties(tandem_train_error_devices_differ_from_launcher tandem_train_error_local_backend_under_launcher
    PROPERTIES LABELS "cpu;app" ENVIRONMENT "RANK=0;WORLD_SIZE=2;MASTER_PORT=1")

  # Multi-device strategies on a short synthetic run. Only rank 0 reports: one progress
  # line per epoch (--log-every exceeds the steps, so only the last step's), one summary
  # per epoch and one final JSON line, and no line from another rank.
  set(lines ${CMAKE_CURRENT_SOURCE_DIR}/check_output_lines.sh)
  set(synthetic --model cnn --dataset synthetic --synthetic-samples 512 --synthetic-shape 1,16,16 --epochs 2
    --batch-size 32 --device cpu --log-every 1000)
  set(one_report 1 "^epoch 1/2  step [0-9]+/[0-9]+ " 1 "^epoch 2/2  step" 1 "^epoch 2/2  train_loss" 1 "^\\{" 0 "rank [1-9]")
  if(TANDEM_GLOO)
    # ddp spawns its two workers itself; the evaluation covers the 102 test samples once.
    add_test(NAME tandem_train_ddp_spawn_gloo_synthetic
      COMMAND ${lines} 0 ${one_report} 1 "\"strategy\":\"ddp\",\"world_size\":2,\"backend\":\"gloo\",\"devices\":2"
        1 "\"global_batch_size\":64" 1 "\"test_samples\":102," -- $<TARGET_FILE:tandem-train> ${synthetic}
        --strategy ddp --devices 2 --backend gloo)
    # Joining tandemrun's job (whose prefix marks every line): rank 0 alone reports.
    add_test(NAME tandem_train_ddp_under_tandemrun
      COMMAND ${lines} 0 1 "^\\[rank 0\\] \\{.*\"world_size\":2" 0 "^\\[rank 1\\]" -- $<TARGET_FILE:tandemrun>
        --nproc-per-node 2 --master-port 0 $<TARGET_FILE:tandem-train> ${synthetic} --strategy ddp)
    # Every DDP option reaches a run; --scale-lr linear doubles sgd's 0.05.
    add_test(NAME tandem_train_ddp_options
      COMMAND ${lines} 0 1 "\"lr\":0\\.1," 1 "^\\{" -- $<TARGET_FILE:tandem-train> ${synthetic} --strategy ddp
        --devices 2 --sync-bn --bucket-cap-mb 0.05 --no-broadcast-buffers --scale-lr linear)
    add_test(NAME tandem_train_ddp_unused_and_static
      COMMAND ${lines} 0 1 "^\\{" -- $<TARGET_FILE:tandem-train> ${synthetic} --strategy ddp --devices 2
        --find-unused-parameters --static-graph)
    # A rank that fails stops the job with its status (3: the loss diverged).
    add_test(NAME tandem_train_ddp_failing_rank
      COMMAND ${check} 3 "tandem-train: error: .*the loss became" -- $<TARGET_FILE:tandem-train> ${synthetic}
        --strategy ddp --devices 2 --lr 1e9)
    set_tests_properties(tandem_train_ddp_spawn_gloo_synthetic tandem_train_ddp_under_tandemrun tandem_train_ddp_options
      tandem_train_ddp_unused_and_static tandem_train_ddp_failing_rank PROPERTIES LABELS "cpu;app")
  endif()
  add_test(NAME tandem_train_ddp_local_threads_synthetic
    COMMAND ${lines} 0 ${one_report} 1 "\"backend\":\"local\",\"devices\":2" 1 "\"test_samples\":102,"
      -- $<TARGET_FILE:tandem-train> ${synthetic} --strategy ddp --devices 2 --backend local)
  # DataParallel over two CPU replicas (for tests only); --batch-size is the global batch.
  add_test(NAME tandem_train_dp_cpu_synthetic
    COMMAND ${lines} 0 ${one_report} 1 "\"strategy\":\"dp\",\"world_size\":1,\"backend\":\"none\",\"devices\":2"
      1 "\"global_batch_size\":32" -- $<TARGET_FILE:tandem-train> ${synthetic} --strategy dp --devices 2)
  set_tests_properties(tandem_train_ddp_local_threads_synthetic tandem_train_dp_cpu_synthetic PROPERTIES LABELS "cpu;app")

  # Issue acceptance: DDP over two CPU processes with batch B per rank reaches the test
  # accuracy of one process with batch 2B within 0.5 points. Both visit the same samples
  # per step (one permutation, sharded); they differ in batch-norm statistics and
  # summation order, after which runs drift apart chaotically: with a constant lr the
  # last step's noise alone moves accuracy by about half a point (0.69 apart at seed 0,
  # 0.21 at seed 1), so the cosine schedule, which settles the models, is compared
  # (0.14 apart). 1.5 min on an idle 2-core machine, 3.5 min under load: label slow
  # (ctest -LE slow skips it).
  if(TANDEM_GLOO)
    add_test(NAME tandem_train_ddp_matches_single_cnn_fashion_mnist
      COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/compare_train_accuracy.sh 0.5
        -- $<TARGET_FILE:tandem-train> --model cnn --strategy ddp --devices 2 --epochs 2 --batch-size 128
          --schedule cosine --device cpu --data ${TANDEM_FASHION_MNIST_DIR}
        -- $<TARGET_FILE:tandem-train> --model cnn --strategy single --epochs 2 --batch-size 256
          --schedule cosine --device cpu --data ${TANDEM_FASHION_MNIST_DIR})
    set_tests_properties(tandem_train_ddp_matches_single_cnn_fashion_mnist PROPERTIES LABELS "cpu;app;slow" TIMEOUT 900)
  endif()
endif()
