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
    "warmup_too_long|--dataset synthetic --synthetic-samples 256 --schedule cosine --warmup-epochs 1|must be shorter than the run")
  foreach(entry ${bad_flags})
    string(REPLACE "|" ";" parts "${entry}")
    list(GET parts 0 name)
    list(GET parts 1 flags)
    list(GET parts 2 regex)
    separate_arguments(flags)
    # Errors before training exit with 2; errors while loading data or opening files with 1.
    if(name MATCHES "^(missing_file|unwritable_metrics)$")
      set(status 1)
    else()
      set(status 2)
    endif()
    add_test(NAME tandem_train_error_${name}
      COMMAND ${check} ${status} "^tandem-train: error: .*${regex}" --one-line -- $<TARGET_FILE:tandem-train> ${flags})
    set_tests_properties(tandem_train_error_${name} PROPERTIES LABELS "cpu;app")
  endforeach()
endif()
