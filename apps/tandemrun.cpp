// tandemrun: starts the N workers of a data-parallel job on this machine with the
// torchrun-style environment comm::init() reads, prefixes their output with the rank,
// forwards SIGINT/SIGTERM, and when one fails stops the rest and exits with its status.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// Output lines longer than this are passed on in pieces rather than held forever.
constexpr size_t kMaxLine = 64 * 1024;
// After every worker has exited, output still buffered in pipes (or held open by
// processes a worker left behind) is read for at most this long.
constexpr auto kDrainTime = std::chrono::milliseconds(1000);

// Signals arrive on this pipe so the poll loop handles them outside the handler.
int signal_pipe[2] = {-1, -1};

void on_signal(int signo) {
  const int saved = errno;
  const auto byte = static_cast<unsigned char>(signo);
  (void)!write(signal_pipe[1], &byte, 1);
  errno = saved;
}

void write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t k = write(fd, text.data() + done, text.size() - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return;  // our own output is gone (a closed pipe): keep supervising
    done += static_cast<size_t>(k);
  }
}

void say(const std::string& line) { write_all(STDERR_FILENO, "[tandemrun] " + line + "\n"); }

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return "was killed by signal " + std::to_string(sig) + " (" + strsignal(sig) + ")";
  }
  return "exited with status " + std::to_string(WEXITSTATUS(status));
}

std::string seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", s);
  return buf;
}

// The shell convention: the exit code, or 128 + the signal that killed it.
int exit_code(int status) { return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status); }

// A free TCP port from the kernel, for --master-port 0. The worker of rank 0 binds
// it a moment later; SO_REUSEADDR on the store's socket makes that reliable.
int pick_free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

// One output stream of one worker, split into lines that get the rank prefix.
struct Stream {
  int fd = -1;      // read end of the worker's pipe; -1 once at EOF
  int target = -1;  // our stdout or stderr
  std::string pending;
};

struct Worker {
  int rank = 0;
  pid_t pid = -1;
  bool exited = false;
  int status = 0;
  Stream out, err;
};

// Passes on every complete line (and, at EOF or when too long, the rest).
void forward_lines(const std::string& prefix, Stream& s, bool eof) {
  std::string text;
  size_t start = 0;
  while (true) {
    const size_t nl = s.pending.find('\n', start);
    if (nl == std::string::npos) break;
    text += prefix;
    text.append(s.pending, start, nl + 1 - start);
    start = nl + 1;
  }
  s.pending.erase(0, start);
  if (!s.pending.empty() && (eof || s.pending.size() >= kMaxLine)) {
    text += prefix + s.pending + "\n";
    s.pending.clear();
  }
  if (!text.empty()) write_all(s.target, text);
}

// Reads what is available; closes the stream at EOF.
void read_stream(const std::string& prefix, Stream& s) {
  char buf[16384];
  while (s.fd >= 0) {
    const ssize_t k = read(s.fd, buf, sizeof(buf));
    if (k > 0) {
      s.pending.append(buf, static_cast<size_t>(k));
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    close(s.fd);
    s.fd = -1;
  }
  forward_lines(prefix, s, s.fd < 0);
}

struct Options {
  int nproc = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  double timeout_s = 0;
  double grace_s = 5;
  std::vector<std::string> command;
};

// Forks worker `rank` in its own process group (so a terminal's Ctrl-C reaches
// tandemrun only, which forwards it once) with its output on two pipes.
Worker spawn(const Options& o, int rank) {
  Worker w;
  w.rank = rank;
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    say(std::string("cannot create a pipe: ") + std::strerror(errno));
    std::exit(1);
  }
  const pid_t parent = getpid();
  // Signals stay blocked across fork until the child has dropped our handlers: a
  // SIGTERM caught there would be written to our signal pipe and taken for our own.
  sigset_t all, previous;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &previous);
  const pid_t pid = fork();
  if (pid != 0) sigprocmask(SIG_SETMASK, &previous, nullptr);
  if (pid < 0) {
    say(std::string("cannot start rank ") + std::to_string(rank) + ": fork failed: " + std::strerror(errno));
    std::exit(1);
  }
  if (pid == 0) {
    setpgid(0, 0);
    // A tandemrun killed with SIGKILL cannot stop its workers; the kernel does it.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    for (int sig : {SIGINT, SIGTERM, SIGCHLD, SIGPIPE}) signal(sig, SIG_DFL);
    close(signal_pipe[0]);
    close(signal_pipe[1]);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    // Workers live in their own process groups, where reading a terminal would stop them.
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    // tandemrun is single-threaded, so setenv is safe between fork and exec.
    setenv("RANK", std::to_string(rank).c_str(), 1);
    setenv("WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
    setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
    setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
    setenv("MASTER_ADDR", o.master_addr.c_str(), 1);
    setenv("MASTER_PORT", std::to_string(o.master_port).c_str(), 1);
    std::vector<char*> argv;
    for (const auto& a : o.command) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    const std::string msg = "tandemrun: cannot run '" + o.command[0] + "': " + std::strerror(errno) + "\n";
    write_all(STDERR_FILENO, msg);
    _exit(127);
  }
  setpgid(pid, pid);  // also here, so the group exists before we might signal it
  close(out[1]);
  close(err[1]);
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  w.pid = pid;
  w.out = Stream{out[0], STDOUT_FILENO, {}};
  w.err = Stream{err[0], STDERR_FILENO, {}};
  return w;
}

class Supervisor {
 public:
  explicit Supervisor(const Options& o) : o_(o) {}

  int run() {
    start_ = Clock::now();
    for (int r = 0; r < o_.nproc; ++r) workers_.push_back(spawn(o_, r));
    std::optional<Clock::time_point> drain_deadline;
    while (true) {
      reap();
      const bool all_exited = live() == 0;
      if (all_exited && !drain_deadline) drain_deadline = Clock::now() + kDrainTime;
      if (all_exited && (open_streams() == 0 || Clock::now() >= *drain_deadline)) break;
      check_deadlines();
      wait_for_events(drain_deadline);
    }
    for (auto& w : workers_) {
      for (Stream* s : {&w.out, &w.err}) {
        if (s->fd >= 0) close(s->fd);
        s->fd = -1;
        forward_lines(prefix(w), *s, true);
      }
    }
    if (failed_rank_) return exit_code(workers_[*failed_rank_].status);
    if (timed_out_) return 124;
    if (interrupt_signal_) return 128 + interrupt_signal_;
    return 0;
  }

 private:
  static std::string prefix(const Worker& w) { return "[rank " + std::to_string(w.rank) + "] "; }

  int live() const {
    int n = 0;
    for (const auto& w : workers_) n += !w.exited;
    return n;
  }

  int open_streams() const {
    int n = 0;
    for (const auto& w : workers_) n += (w.out.fd >= 0) + (w.err.fd >= 0);
    return n;
  }

  void reap() {
    for (auto& w : workers_) {
      if (w.exited) continue;
      int status = 0;
      const pid_t got = waitpid(w.pid, &status, WNOHANG);
      if (got != w.pid) continue;
      w.exited = true;
      w.status = status;
      const bool failed = WIFSIGNALED(status) || WEXITSTATUS(status) != 0;
      if (failed && !failed_rank_ && !stopping_) {
        failed_rank_ = w.rank;
        const int others = live();
        say("rank " + std::to_string(w.rank) + " (pid " + std::to_string(w.pid) + ") " + describe_status(status) +
            (others > 0 ? "; stopping the other " + std::to_string(others) + " worker" + (others > 1 ? "s" : "")
                        : ""));
        stop(SIGTERM);
      } else if (failed && !failed_rank_ && interrupt_signal_) {
        // Workers we interrupted: the first one's status is the job's.
        failed_rank_ = w.rank;
      }
    }
  }

  // Sends `sig` to every live worker's process group (its children included) and
  // starts the grace period after which SIGKILL follows.
  void stop(int sig) {
    if (!stopping_) kill_deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                      std::chrono::duration<double>(o_.grace_s));
    stopping_ = true;
    for (const auto& w : workers_)
      if (!w.exited) killpg(w.pid, sig);
  }

  void check_deadlines() {
    const auto now = Clock::now();
    if (stopping_ && !killed_ && now >= kill_deadline_ && live() > 0) {
      say("workers still running " + seconds(o_.grace_s) + " s after SIGTERM; sending SIGKILL");
      for (const auto& w : workers_)
        if (!w.exited) killpg(w.pid, SIGKILL);
      killed_ = true;
    }
    if (o_.timeout_s > 0 && !stopping_ && now - start_ >= std::chrono::duration<double>(o_.timeout_s)) {
      say("the job ran longer than --timeout " + seconds(o_.timeout_s) + " s; stopping the workers");
      timed_out_ = true;
      stop(SIGTERM);
    }
  }

  void on_signal_byte(int signo) {
    if (signo == SIGCHLD) return;  // reap() runs every iteration
    if (interrupt_signal_ != 0) {
      // A second Ctrl-C: the user does not want to wait for a graceful stop.
      say("received signal " + std::to_string(signo) + " again; killing the workers");
      for (const auto& w : workers_)
        if (!w.exited) killpg(w.pid, SIGKILL);
      killed_ = true;
      return;
    }
    interrupt_signal_ = signo;
    say(std::string("received ") + strsignal(signo) + "; forwarding it to the workers");
    stop(signo);
  }

  void wait_for_events(const std::optional<Clock::time_point>& drain_deadline) {
    std::vector<pollfd> fds{{signal_pipe[0], POLLIN, 0}};
    std::vector<std::pair<Worker*, Stream*>> owners{{nullptr, nullptr}};
    for (auto& w : workers_)
      for (Stream* s : {&w.out, &w.err})
        if (s->fd >= 0) {
          fds.push_back({s->fd, POLLIN, 0});
          owners.emplace_back(&w, s);
        }
    // Wake up at least every 100 ms: deadlines, and SIGCHLD that raced with poll().
    int timeout_ms = 100;
    if (drain_deadline) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*drain_deadline - Clock::now()).count();
      timeout_ms = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(left, 100)));
    }
    const int n = poll(fds.data(), fds.size(), timeout_ms);
    if (n <= 0) return;
    if (fds[0].revents & POLLIN) {
      unsigned char bytes[64];
      const ssize_t k = read(signal_pipe[0], bytes, sizeof(bytes));
      for (ssize_t i = 0; i < k; ++i) on_signal_byte(bytes[i]);
    }
    for (size_t i = 1; i < fds.size(); ++i)
      if (fds[i].revents) read_stream(prefix(*owners[i].first), *owners[i].second);
  }

  const Options& o_;
  std::vector<Worker> workers_;
  Clock::time_point start_;
  Clock::time_point kill_deadline_;
  bool stopping_ = false;
  bool killed_ = false;
  bool timed_out_ = false;
  int interrupt_signal_ = 0;
  std::optional<int> failed_rank_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
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
  if (o.master_port == 0) {
    o.master_port = pick_free_port();
    if (o.master_port < 0) {
      std::fprintf(stderr, "tandemrun: error: cannot find a free port: %s\n", std::strerror(errno));
      return 1;
    }
  }

  if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    std::fprintf(stderr, "tandemrun: error: cannot create a pipe: %s\n", std::strerror(errno));
    return 1;
  }
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGINT, SIGTERM, SIGCHLD}) sigaction(sig, &sa, nullptr);
  // A reader of our output that goes away must not kill the supervisor.
  signal(SIGPIPE, SIG_IGN);

  return Supervisor(o).run();
}
