// tandemrun: starts the N workers of a data-parallel job on this machine with the
// torchrun-style environment comm::init() reads, prefixes their output with the rank,
// forwards SIGINT/SIGTERM, and when one fails stops the rest and exits with its status.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <string>

#include "comm/spawn.h"

int main(int argc, char** argv) {
  tandem::comm::SpawnOptions o;
  CLI::App app{
      "tandemrun: starts the workers of a data-parallel job on this machine.\n"
      "Each worker gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and\n"
      "MASTER_PORT; its output lines are prefixed with \"[rank k] \". When a worker fails,\n"
      "the others are stopped and tandemrun exits with the failing worker's status.",
      "tandemrun"};
  // Everything from the program's name on belongs to the program.
  app.prefix_command();
  app.add_option("--nproc-per-node", o.nproc, "Number of workers to start")->required()->check(CLI::Range(1, 4096));
  app.add_option("--master-addr", o.master_addr, "Address of rank 0, where the store listens")
      ->capture_default_str();
  app.add_option("--master-port", o.master_port, "Port of rank 0's store; 0 picks a free one")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app.add_option("--timeout", o.timeout_s, "Stop the workers and exit 124 after this many seconds (0: no limit)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--grace", o.grace_s, "Seconds between SIGTERM and SIGKILL when stopping workers")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::printf("%s", app.help().c_str());
    return 0;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "tandemrun: error: %s\n", e.what());
    return 2;
  }
  o.command = app.remaining();
  if (!o.command.empty() && o.command.front() == "--") o.command.erase(o.command.begin());
  if (o.command.empty()) {
    std::fprintf(stderr, "tandemrun: error: expected a program to run after the options\n");
    return 2;
  }
  try {
    return tandem::comm::run_workers(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tandemrun: error: %s\n", e.what());
    return 1;
  }
}
