// Tests of apps/tandemrun: the environment and output prefix each worker gets, exit
// statuses when workers fail or are killed, signal forwarding, and end-to-end jobs
// whose workers (this binary, re-executed) meet through the TCP store and comm::init.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "comm/launch.h"
#include "comm/store.h"
#include "engine/ops/factory.h"
#include "tandem/config.h"
#include "test_util.h"

namespace tandem::comm {
namespace {

using namespace std::chrono_literals;

const std::string kTandemrun = std::string(TANDEM_BINARY_DIR) + "/apps/tandemrun";

struct Result {
  int status = -1;  // shell-style: exit code, or 128 + signal
  std::string output;
};

// Runs tandemrun with `args` (stdout and stderr together) and `env` added; kills it
// and fails the test if it runs past `timeout`, so a broken supervisor never hangs CI.
Result tandemrun(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {},
                 std::chrono::milliseconds timeout = 20s) {
  std::vector<std::string> all{kTandemrun};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  int pipefd[2];
  if (pipe(pipefd) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(pipefd[1], STDOUT_FILENO);
    dup2(pipefd[1], STDERR_FILENO);
    // Only fds 1 and 2 may hold the pipe: a stray copy inherited by a worker's leftover
    // child would keep the pipe open after tandemrun exits.
    close(pipefd[0]);
    close(pipefd[1]);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(pipefd[1]);
  Result result;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  while (true) {
    pollfd p{pipefd[0], POLLIN, 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      kill(pid, SIGKILL);
      ADD_FAILURE() << "tandemrun did not finish within " << timeout.count() << " ms; output so far:\n"
                    << result.output;
      break;
    }
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t k = read(pipefd[0], buf, sizeof(buf));
    if (k <= 0) break;
    result.output.append(buf, static_cast<size_t>(k));
  }
  close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  result.status = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
  return result;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

#define REQUIRE_TANDEMRUN()                                                                             \
  do {                                                                                                  \
    if (!std::filesystem::exists(kTandemrun)) GTEST_SKIP() << kTandemrun << " not built (TANDEM_BUILD_APPS=OFF)"; \
  } while (0)

std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

bool is_worker(const char* role) {
  const char* r = std::getenv("TANDEM_TEST_TANDEMRUN_ROLE");
  return r != nullptr && std::string(r) == role;
}

// ---- workers started by tandemrun ---------------------------------------------------------

TEST(TandemrunWorker, StoreRendezvous) {
  if (!is_worker("store")) GTEST_SKIP() << "runs under tandemrun in Tandemrun.WorkersMeetThroughTheStore";
  const LaunchEnv env = launch_env();
  auto store = make_tcp_store({.host = env.master_addr,
                               .port = env.master_port,
                               .is_server = env.rank == 0,
                               .world_size = env.world_size,
                               .timeout = 10s,
                               .rank = env.rank});
  store->set("rank/" + std::to_string(env.rank), {static_cast<uint8_t>(env.rank)});
  for (int r = 0; r < env.world_size; ++r) EXPECT_EQ(store->get("rank/" + std::to_string(r))[0], r);
  if (store->add("done", 1) == env.world_size) store->set("all_done", {});
  store->wait({"all_done"});
  // Rank 0 hosts the store: it leaves last so nobody loses the server mid-call.
  if (env.rank == 0) {
    store->wait({"others_left"});
  } else if (store->add("left", 1) == env.world_size - 1) {
    store->set("others_left", {});
  }
  std::printf("rank %d of %d met everyone\n", env.rank, env.world_size);
}

TEST(TandemrunWorker, GlooAllReduce) {
  if (!is_worker("gloo")) GTEST_SKIP() << "runs under tandemrun in Tandemrun.GlooAllReduceJob";
  auto group = init({.backend = "gloo", .timeout = 10s});
  if (std::getenv("TANDEM_TEST_DIE_RANK") != nullptr && group->rank() == std::atoi(std::getenv("TANDEM_TEST_DIE_RANK")))
    kill(getpid(), SIGKILL);
  Tensor x = full({5}, group->rank() + 1.0, {.dtype = DType::kF32});
  group->all_reduce(x)->wait();
  const float want = group->size() * (group->size() + 1) / 2.0f;
  for (float v : x.to_vector<float>()) EXPECT_EQ(v, want);
  group->barrier()->wait();
  std::printf("all_reduce ok on rank %d\n", group->rank());
}

// ---- tandemrun itself ------------------------------------------------------------------

TEST(Tandemrun, WorkersThatSucceedGivePrefixedOutputAndStatusZero) {
  REQUIRE_TANDEMRUN();
  const auto r = tandemrun({"--nproc-per-node", "3", "sh", "-c", "echo hello from $RANK; echo oops $RANK >&2"});
  EXPECT_EQ(r.status, 0) << r.output;
  for (int k = 0; k < 3; ++k) {
    EXPECT_TRUE(contains(r.output, "[rank " + std::to_string(k) + "] hello from " + std::to_string(k) + "\n")) << r.output;
    EXPECT_TRUE(contains(r.output, "[rank " + std::to_string(k) + "] oops " + std::to_string(k) + "\n")) << r.output;
  }
}

TEST(Tandemrun, EachWorkerSeesItsEnvironment) {
  REQUIRE_TANDEMRUN();
  const auto r = tandemrun({"--nproc-per-node", "2", "--master-addr", "10.9.8.7", "--master-port", "23456", "sh",
                            "-c", "echo env $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT"});
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "[rank 0] env 0 2 0 2 10.9.8.7 23456\n")) << r.output;
  EXPECT_TRUE(contains(r.output, "[rank 1] env 1 2 1 2 10.9.8.7 23456\n")) << r.output;
}

TEST(Tandemrun, MasterPortZeroPicksOneFreePortForAll) {
  REQUIRE_TANDEMRUN();
  const auto r = tandemrun({"--nproc-per-node", "2", "--master-port", "0", "sh", "-c", "echo port=$MASTER_PORT"});
  EXPECT_EQ(r.status, 0) << r.output;
  const auto at = r.output.find("port=");
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string port = r.output.substr(at + 5, r.output.find('\n', at) - at - 5);
  EXPECT_NE(port, "0");
  EXPECT_TRUE(contains(r.output, "[rank 0] port=" + port)) << r.output;
  EXPECT_TRUE(contains(r.output, "[rank 1] port=" + port)) << r.output;
}

TEST(Tandemrun, FailingWorkerStopsTheOthersAndGivesItsStatus) {
  REQUIRE_TANDEMRUN();
  // The others would sleep 30 s; the 20 s limit of tandemrun() fails the test if they are not stopped.
  const auto r = tandemrun({"--nproc-per-node", "3", "sh", "-c", "if [ $RANK = 1 ]; then exit 3; fi; sleep 30"});
  EXPECT_EQ(r.status, 3) << r.output;
  EXPECT_TRUE(contains(r.output, "[tandemrun] rank 1 (pid ")) << r.output;
  EXPECT_TRUE(contains(r.output, "exited with status 3; stopping the other 2 workers")) << r.output;
}

TEST(Tandemrun, KilledWorkerGives128PlusSignal) {
  REQUIRE_TANDEMRUN();
  const auto r = tandemrun({"--nproc-per-node", "2", "sh", "-c", "if [ $RANK = 0 ]; then kill -9 $$; fi; sleep 30"});
  EXPECT_EQ(r.status, 128 + SIGKILL) << r.output;
  EXPECT_TRUE(contains(r.output, "rank 0 (pid ")) << r.output;
  EXPECT_TRUE(contains(r.output, "was killed by signal 9")) << r.output;
}

TEST(Tandemrun, WorkerIgnoringSigtermIsKilledAfterTheGracePeriod) {
  REQUIRE_TANDEMRUN();
  const auto r = tandemrun({"--nproc-per-node", "2", "--grace", "0.2", "sh", "-c",
                            "trap '' TERM; if [ $RANK = 0 ]; then sleep 0.5; exit 4; fi; sleep 30"});
  EXPECT_EQ(r.status, 4) << r.output;
  EXPECT_TRUE(contains(r.output, "sending SIGKILL")) << r.output;
}

TEST(Tandemrun, ForwardsSigtermToTheWorkers) {
  REQUIRE_TANDEMRUN();
  // Rank 0 signals tandemrun (its parent), which must pass SIGTERM on to every worker.
  const auto r = tandemrun({"--nproc-per-node", "2", "sh", "-c",
                            "trap 'echo caught $RANK; exit 7' TERM; if [ $RANK = 0 ]; then kill -TERM $PPID; fi; "
                            "sleep 30 & wait"});
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "[tandemrun] received Terminated; forwarding it to the workers")) << r.output;
  EXPECT_TRUE(contains(r.output, "[rank 0] caught 0")) << r.output;
}

TEST(Tandemrun, TimeoutStopsTheJob) {
  REQUIRE_TANDEMRUN();
  const auto r = tandemrun({"--nproc-per-node", "2", "--timeout", "0.3", "sleep", "30"});
  EXPECT_EQ(r.status, 124) << r.output;
  EXPECT_TRUE(contains(r.output, "ran longer than --timeout 0.3 s")) << r.output;
}

TEST(Tandemrun, UsageErrors) {
  REQUIRE_TANDEMRUN();
  auto r = tandemrun({"--nproc-per-node", "2"});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.output, "tandemrun: error: expected a program to run")) << r.output;
  r = tandemrun({"--nproc-per-node", "0", "true"});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.output, "--nproc-per-node")) << r.output;
  r = tandemrun({"true"});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.output, "--nproc-per-node is required")) << r.output;
  r = tandemrun({"--nproc-per-node", "2", "/nonexistent/program"});
  EXPECT_EQ(r.status, 127);
  EXPECT_TRUE(contains(r.output, "cannot run '/nonexistent/program'")) << r.output;
  // Options after the program's name are the program's.
  r = tandemrun({"--nproc-per-node", "1", "echo", "--nproc-per-node", "9"});
  EXPECT_EQ(r.status, 0);
  EXPECT_TRUE(contains(r.output, "[rank 0] --nproc-per-node 9")) << r.output;
}

TEST(Tandemrun, WorkersMeetThroughTheStore) {
  REQUIRE_TANDEMRUN();
  const auto r = tandemrun({"--nproc-per-node", "4", "--master-port", "0", self_exe(),
                            "--gtest_filter=TandemrunWorker.StoreRendezvous"},
                           {{"TANDEM_TEST_TANDEMRUN_ROLE", "store"}});
  EXPECT_EQ(r.status, 0) << r.output;
  for (int k = 0; k < 4; ++k)
    EXPECT_TRUE(contains(r.output, "[rank " + std::to_string(k) + "] rank " + std::to_string(k) + " of 4 met everyone"))
        << r.output;
}

TEST(Tandemrun, GlooAllReduceJob) {
  REQUIRE_TANDEMRUN();
  if (!TANDEM_GLOO) GTEST_SKIP() << "built without Gloo";
  const auto r = tandemrun({"--nproc-per-node", "3", "--master-port", "0", self_exe(),
                            "--gtest_filter=TandemrunWorker.GlooAllReduce"},
                           {{"TANDEM_TEST_TANDEMRUN_ROLE", "gloo"}});
  EXPECT_EQ(r.status, 0) << r.output;
  for (int k = 0; k < 3; ++k)
    EXPECT_TRUE(contains(r.output, "[rank " + std::to_string(k) + "] all_reduce ok on rank " + std::to_string(k)))
        << r.output;
}

TEST(Tandemrun, GlooJobWithAKilledWorkerFailsNamingIt) {
  REQUIRE_TANDEMRUN();
  if (!TANDEM_GLOO) GTEST_SKIP() << "built without Gloo";
  const auto r = tandemrun({"--nproc-per-node", "3", "--master-port", "0", self_exe(),
                            "--gtest_filter=TandemrunWorker.GlooAllReduce"},
                           {{"TANDEM_TEST_TANDEMRUN_ROLE", "gloo"}, {"TANDEM_TEST_DIE_RANK", "1"}});
  EXPECT_EQ(r.status, 128 + SIGKILL) << r.output;
  EXPECT_TRUE(contains(r.output, "[tandemrun] rank 1 (pid ")) << r.output;
  EXPECT_TRUE(contains(r.output, "was killed by signal 9")) << r.output;
}

}  // namespace
}  // namespace tandem::comm
