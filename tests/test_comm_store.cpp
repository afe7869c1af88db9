// Tests of the key-value stores (HashStore; TCPStore with clients in threads and in
// worker processes re-executed from this binary), of the launch environment parser
// and of comm::init's backend choice.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <future>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "comm/launch.h"
#include "comm/store.h"
#include "tandem/config.h"
#include "test_util.h"

extern char** environ;

namespace tandem::comm {
namespace {

using namespace std::chrono_literals;
using Bytes = std::vector<uint8_t>;
using tandem::testing::expect_invalid;

Bytes bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string text(const Bytes& b) { return {b.begin(), b.end()}; }

// A port nothing listens on right now (the kernel's pick for port 0).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::shared_ptr<Store> server(int port, std::chrono::milliseconds timeout = 5s) {
  return make_tcp_store({.port = port, .is_server = true, .world_size = 4, .timeout = timeout, .rank = 0});
}

std::shared_ptr<Store> client(int port, int rank, std::chrono::milliseconds timeout = 5s) {
  return make_tcp_store({.port = port, .is_server = false, .world_size = 4, .timeout = timeout, .rank = rank});
}

template <typename E>
void expect_message(const std::function<void()>& fn, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception";
  } catch (const E& e) {
    const std::string what = e.what();
    for (const auto& p : pieces) EXPECT_NE(what.find(p), std::string::npos) << "'" << p << "' not in: " << what;
  }
}

// ---- worker processes ----------------------------------------------------------------

// Starts this test binary again running only `test`, with `env` added. Arrays are
// built before fork so the child only calls execve (the parent has threads).
pid_t spawn_self(const std::string& test, const std::map<std::string, std::string>& env) {
  std::vector<std::string> args{"/proc/self/exe", "--gtest_filter=" + test};
  std::vector<std::string> vars;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string v = *e;
    if (!env.count(v.substr(0, v.find('=')))) vars.push_back(v);
  }
  for (const auto& [k, v] : env) vars.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  for (auto& v : vars) envp.push_back(v.data());
  argv.push_back(nullptr);
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

// Waits for `pid` up to `timeout` (killing it after) and returns its wait status.
int wait_for(pid_t pid, std::chrono::milliseconds timeout = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      ADD_FAILURE() << "worker " << pid << " did not finish in time";
      return -1;
    }
    std::this_thread::sleep_for(10ms);
  }
  return status;
}

bool is_worker(const char* role) {
  const char* r = std::getenv("TANDEM_TEST_STORE_ROLE");
  return r != nullptr && std::string(r) == role;
}

// Each rank publishes a value, reads everyone's, then meets the others at a barrier
// built from add(); the last to arrive sets the key that releases the rest.
void exchange(Store& store, int rank, int size) {
  store.set("value/" + std::to_string(rank), bytes("from rank " + std::to_string(rank)));
  for (int r = 0; r < size; ++r) EXPECT_EQ(text(store.get("value/" + std::to_string(r))), "from rank " + std::to_string(r));
  if (store.add("arrived", 1) == size) store.set("all_arrived", {});
  store.wait({"all_arrived"});
  EXPECT_EQ(text(store.get("arrived")), std::to_string(size));
}

TEST(StoreWorker, Exchange) {
  if (!is_worker("exchange")) GTEST_SKIP() << "runs as a worker process of TCPStore.ProcessesExchangeAndMeet";
  const LaunchEnv env = launch_env();
  auto store = make_tcp_store({.host = env.master_addr,
                               .port = env.master_port,
                               .world_size = env.world_size,
                               .timeout = 10s,
                               .rank = env.rank});
  exchange(*store, env.rank, env.world_size);
}

TEST(StoreWorker, ServerThatDies) {
  if (!is_worker("server_dies")) GTEST_SKIP() << "runs as a worker process of TCPStore.ServerProcessDeathFailsClients";
  const LaunchEnv env = launch_env();
  auto store = server(env.master_port, 10s);
  store->set("ready", {});
  store->wait({"client_waiting"});
  std::this_thread::sleep_for(100ms);  // let the client's get reach the server
  kill(getpid(), SIGKILL);
}

// ---- HashStore -------------------------------------------------------------------------

TEST(HashStore, SetGetAddCheckWait) {
  auto store = make_hash_store(1s);
  EXPECT_FALSE(store->check({"a"}));
  store->set("a", Bytes{0, 1, 2});
  EXPECT_EQ(store->get("a"), (Bytes{0, 1, 2}));
  EXPECT_TRUE(store->check({"a"}));
  EXPECT_EQ(store->add("n", 5), 5);
  EXPECT_EQ(store->add("n", -2), 3);
  EXPECT_EQ(text(store->get("n")), "3");
  store->wait({"a", "n"});
  EXPECT_EQ(store->timeout(), 1s);
}

TEST(HashStore, GetBlocksUntilAnotherThreadSets) {
  auto store = make_hash_store(10s);
  auto value = std::async(std::launch::async, [&] { return store->get("late"); });
  std::this_thread::sleep_for(50ms);
  store->set("late", bytes("here"));
  EXPECT_EQ(text(value.get()), "here");
}

TEST(HashStore, TimeoutNamesTheMissingKey) {
  auto store = make_hash_store(50ms);
  store->set("present", {});
  expect_message<std::runtime_error>([&] { store->get("missing"); }, {"timed out after 50 ms", "'missing'"});
  expect_message<std::runtime_error>([&] { store->wait({"present", "absent"}); }, {"'absent'"});
}

TEST(HashStore, BadArguments) {
  expect_invalid([] { make_hash_store(0ms); }, {"positive timeout", "0 ms"});
  auto store = make_hash_store(1s);
  store->set("blob", bytes("xyz"));
  expect_invalid([&] { store->add("blob", 1); }, {"'blob'", "integer"});
}

// ---- TCPStore in one process -------------------------------------------------------------

TEST(TCPStore, RoundTripsEveryCommand) {
  const int port = free_port();
  auto s = server(port);
  auto c = client(port, 1);
  Bytes big(1 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 7);
  c->set("big", big);
  c->set("empty", {});
  EXPECT_EQ(s->get("big"), big);
  EXPECT_TRUE(s->get("empty").empty());
  EXPECT_EQ(s->add("n", 2), 2);
  EXPECT_EQ(c->add("n", 3), 5);
  EXPECT_TRUE(c->check({"big", "n"}));
  EXPECT_FALSE(c->check({"big", "nope"}));
  c->wait({"big", "empty", "n"});
  c->wait({});
  s->set("big", bytes("replaced"));
  EXPECT_EQ(text(c->get("big")), "replaced");
}

TEST(TCPStore, ClientThreadsMeetAndBlockingGetIsReleased) {
  const int port = free_port();
  auto s = server(port);
  constexpr int kSize = 4;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int r = 1; r < kSize; ++r)
    threads.emplace_back([&, r] {
      try {
        auto c = client(port, r);
        exchange(*c, r, kSize);
        // Released only by rank 0's set after everyone is past the barrier.
        if (text(c->get("go")) != "now") failures++;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << ": " << e.what();
        failures++;
      }
    });
  exchange(*s, 0, kSize);
  std::this_thread::sleep_for(20ms);
  s->set("go", bytes("now"));
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
}

TEST(TCPStore, TimeoutNamesKeyRankAndStore) {
  const int port = free_port();
  auto s = server(port);
  auto c = client(port, 2, 200ms);
  const std::string where = "(rank 2, store 127.0.0.1:" + std::to_string(port) + ")";
  expect_message<std::runtime_error>([&] { c->get("x"); }, {"[store] timed out after 200 ms waiting for key 'x' " + where});
  c->set("y", {});
  expect_message<std::runtime_error>([&] { c->wait({"y", "z"}); }, {"waiting for key 'z'", where});
  // A timeout leaves the connection in step.
  c->set("x", bytes("later"));
  EXPECT_EQ(text(c->get("x")), "later");
}

TEST(TCPStore, PortInUseIsAClearError) {
  const int port = free_port();
  auto s = server(port);
  expect_message<std::runtime_error>([&] { server(port); },
                                     {"cannot listen on port " + std::to_string(port), "in use", "MASTER_PORT"});
}

TEST(TCPStore, ConnectGivesUpAfterTheTimeout) {
  const int port = free_port();
  expect_message<std::runtime_error>([&] { client(port, 3, 300ms); },
                                     {"could not connect within 300 ms", "rank 3", std::to_string(port)});
}

TEST(TCPStore, ClientsFailWhenTheServerGoesAway) {
  const int port = free_port();
  auto s = server(port);
  auto c = client(port, 1, 30s);
  auto pending = std::async(std::launch::async, [&] { c->get("never"); });
  std::this_thread::sleep_for(50ms);
  s.reset();
  try {
    pending.get();
    ADD_FAILURE() << "expected an exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("closed"), std::string::npos) << e.what();
  }
  expect_message<std::runtime_error>([&] { c->set("k", {}); }, {"lost earlier"});
}

TEST(TCPStore, BadOptionsAndValues) {
  expect_invalid([] { make_tcp_store({.port = 0}); }, {"port in [1, 65535]", "got 0"});
  expect_invalid([] { make_tcp_store({.port = 70000}); }, {"got 70000"});
  expect_invalid([] { make_tcp_store({.port = 29500, .world_size = 0}); }, {"world size >= 1", "got 0"});
  expect_invalid([] { make_tcp_store({.port = 29500, .timeout = 0ms}); }, {"positive timeout"});
  const int port = free_port();
  auto s = server(port);
  s->set("blob", bytes("xyz"));
  expect_invalid([&] { s->add("blob", 1); }, {"'blob'", "integer"});
  EXPECT_EQ(s->add("fresh", 1), 1);  // the error did not break the connection
}

// ---- TCPStore across processes -----------------------------------------------------------

TEST(TCPStore, ProcessesExchangeAndMeet) {
  const int port = free_port();
  constexpr int kSize = 4;
  auto s = server(port, 10s);
  std::vector<pid_t> pids;
  for (int r = 1; r < kSize; ++r)
    pids.push_back(spawn_self("StoreWorker.Exchange", {{"TANDEM_TEST_STORE_ROLE", "exchange"},
                                                         {"RANK", std::to_string(r)},
                                                         {"WORLD_SIZE", std::to_string(kSize)},
                                                         {"MASTER_ADDR", "127.0.0.1"},
                                                         {"MASTER_PORT", std::to_string(port)}}));
  exchange(*s, 0, kSize);
  for (pid_t pid : pids) {
    const int status = wait_for(pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "worker status " << status;
  }
}

TEST(TCPStore, ServerProcessDeathFailsClients) {
  const int port = free_port();
  const pid_t pid = spawn_self("StoreWorker.ServerThatDies",
                               {{"TANDEM_TEST_STORE_ROLE", "server_dies"}, {"MASTER_PORT", std::to_string(port)}});
  auto c = client(port, 1, 30s);  // retries until the worker listens
  c->wait({"ready"});
  c->set("client_waiting", {});
  expect_message<std::runtime_error>([&] { c->get("never"); }, {"the store closed it", "did rank 0 exit?", "rank 1"});
  const int status = wait_for(pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "worker status " << status;
}

// ---- launch environment -----------------------------------------------------------------

LaunchEnv parse(const std::map<std::string, std::string>& vars) {
  return launch_env([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(LaunchEnv, NoLauncherIsWorldSizeOne) {
  const LaunchEnv env = parse({});
  EXPECT_EQ(env.launcher, "none");
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.local_world_size, 1);
}

TEST(LaunchEnv, Torchrun) {
  const LaunchEnv env = parse({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "4"},
                               {"MASTER_ADDR", "node7"}, {"MASTER_PORT", "1234"}});
  EXPECT_EQ(env.launcher, "torchrun");
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_world_size, 4);
  EXPECT_EQ(env.master_addr, "node7");
  EXPECT_EQ(env.master_port, 1234);
  // Without the local variables: one node, and the default store address.
  const LaunchEnv single = parse({{"RANK", "2"}, {"WORLD_SIZE", "3"}});
  EXPECT_EQ(single.local_rank, 2);
  EXPECT_EQ(single.local_world_size, 3);
  EXPECT_EQ(single.master_addr, "127.0.0.1");
  EXPECT_EQ(single.master_port, 29500);
}

TEST(LaunchEnv, TorchrunErrorsNameTheVariable) {
  expect_invalid([] { parse({{"RANK", "0"}}); }, {"RANK is set but WORLD_SIZE is not"});
  expect_invalid([] { parse({{"WORLD_SIZE", "2"}}); }, {"WORLD_SIZE is set but RANK is not"});
  expect_invalid([] { parse({{"RANK", "abc"}, {"WORLD_SIZE", "2"}}); }, {"RANK: expected an integer >= 0, got 'abc'"});
  expect_invalid([] { parse({{"RANK", "1x"}, {"WORLD_SIZE", "2"}}); }, {"RANK", "got '1x'"});
  expect_invalid([] { parse({{"RANK", "-1"}, {"WORLD_SIZE", "2"}}); }, {"RANK: expected an integer >= 0, got -1"});
  expect_invalid([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "0"}}); }, {"WORLD_SIZE: expected an integer >= 1, got 0"});
  expect_invalid([] { parse({{"RANK", "4"}, {"WORLD_SIZE", "4"}}); }, {"expected RANK < WORLD_SIZE, got RANK=4, WORLD_SIZE=4"});
  expect_invalid([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}}); },
                 {"expected LOCAL_RANK < LOCAL_WORLD_SIZE, got LOCAL_RANK=2, LOCAL_WORLD_SIZE=2"});
  expect_invalid([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_WORLD_SIZE", "3"}}); },
                 {"LOCAL_WORLD_SIZE in [1, WORLD_SIZE]", "LOCAL_WORLD_SIZE=3"});
  expect_invalid([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}); },
                 {"MASTER_PORT: expected a port in [1, 65535], got 70000"});
  expect_invalid([] { parse({{"MASTER_PORT", "http"}}); }, {"MASTER_PORT", "got 'http'"});
  expect_invalid([] { parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", ""}}); }, {"MASTER_ADDR"});
}

TEST(LaunchEnv, Slurm) {
  const LaunchEnv env = parse({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"},
                               {"SLURM_NTASKS_PER_NODE", "4"}, {"SLURM_NNODES", "2"},
                               {"SLURM_LAUNCH_NODE_IPADDR", "10.1.2.3"}, {"SLURM_JOB_ID", "123456"}});
  EXPECT_EQ(env.launcher, "slurm");
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_world_size, 4);
  EXPECT_EQ(env.master_addr, "10.1.2.3");
  EXPECT_EQ(env.master_port, 20000 + 3456);  // from the job id: jobs sharing a node differ
  // MASTER_ADDR/MASTER_PORT win; SLURM_TASKS_PER_NODE's compressed form is understood.
  const LaunchEnv over = parse({{"SLURM_PROCID", "6"}, {"SLURM_NTASKS", "7"}, {"SLURM_LOCALID", "0"},
                                {"SLURM_TASKS_PER_NODE", "2(x3),1"}, {"SLURM_NNODES", "4"},
                                {"MASTER_ADDR", "head"}, {"MASTER_PORT", "4000"}});
  EXPECT_EQ(over.local_world_size, 2);
  EXPECT_EQ(over.master_addr, "head");
  EXPECT_EQ(over.master_port, 4000);
  // Torchrun-style variables take precedence (torchrun inside a Slurm allocation).
  EXPECT_EQ(parse({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}, {"RANK", "1"}, {"WORLD_SIZE", "2"}}).launcher,
            "torchrun");
}

TEST(LaunchEnv, SlurmErrors) {
  expect_invalid([] { parse({{"SLURM_PROCID", "0"}}); }, {"SLURM_PROCID is set but SLURM_NTASKS is not"});
  expect_invalid([] { parse({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "2"}}); },
                 {"expected SLURM_PROCID < SLURM_NTASKS, got SLURM_PROCID=3, SLURM_NTASKS=2"});
  expect_invalid([] { parse({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_NTASKS_PER_NODE", "x"}}); },
                 {"SLURM_NTASKS_PER_NODE", "got 'x'"});
  expect_invalid([] { parse({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_NNODES", "2"}}); },
                 {"MASTER_ADDR is not set", "2 nodes"});
}

TEST(LaunchEnv, OpenMpi) {
  const LaunchEnv env = parse({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                               {"OMPI_COMM_WORLD_LOCAL_RANK", "3"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
  EXPECT_EQ(env.launcher, "openmpi");
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 3);
  EXPECT_EQ(env.master_addr, "127.0.0.1");
  expect_invalid([] { parse({{"OMPI_COMM_WORLD_RANK", "0"}}); }, {"OMPI_COMM_WORLD_SIZE is not"});
  expect_invalid([] {
    parse({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
           {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  }, {"MASTER_ADDR is not set", "mpirun -x MASTER_ADDR"});
}

// ---- init ------------------------------------------------------------------------------

TEST(Init, ResolvesAndChecksTheBackend) {
  EXPECT_EQ(resolve_backend("local", 1), "local");
  expect_invalid([] { resolve_backend("mpi", 2); }, {"\"auto\", \"nccl\", \"gloo\" or \"local\"", "got \"mpi\""});
  expect_invalid([] { resolve_backend("local", 2); }, {"expected world size 1, got 2"});
  if (!TANDEM_NCCL) {
    expect_invalid([] { resolve_backend("nccl", 2); }, {"'nccl' is not built", "-DTANDEM_NCCL=ON"});
  }
  if (!TANDEM_GLOO) {
    expect_invalid([] { resolve_backend("gloo", 2); }, {"'gloo' is not built", "-DTANDEM_GLOO=ON"});
  } else {
    EXPECT_EQ(resolve_backend("gloo", 2), "gloo");
  }
  if (!cuda::is_available()) {
    EXPECT_EQ(resolve_backend("auto", 1), TANDEM_GLOO ? "gloo" : "local");
  }
}

TEST(Init, WithoutALauncherIsASingleRank) {
  for (const char* v : {"RANK", "WORLD_SIZE", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"})
    if (std::getenv(v) != nullptr) GTEST_SKIP() << v << " is set: this test needs a plain environment";
  auto group = init({.backend = "local", .timeout = 5s});
  EXPECT_EQ(group->rank(), 0);
  EXPECT_EQ(group->size(), 1);
  EXPECT_EQ(group->backend(), "local");
  if (!cuda::is_available()) {
    auto g = init({.timeout = 5s});
    EXPECT_EQ(g->backend(), TANDEM_GLOO ? "gloo" : "local");
    g->barrier()->wait();
  }
}

}  // namespace
}  // namespace tandem::comm
