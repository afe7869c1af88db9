// The worker supervisor behind tandemrun and tandem-train --strategy ddp: fork/exec
// of each rank with the launcher environment, a poll loop that passes output on line
// by line and reacts to signals, worker failures and deadlines.
#include "comm/spawn.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace tandem::comm {
namespace {

using Clock = std::chrono::steady_clock;

// Output lines longer than this are passed on in pieces rather than held forever.
constexpr size_t kMaxLine = 64 * 1024;
// After every worker has exited, output still buffered in pipes (or held open by
// processes a worker left behind) is read for at most this long.
constexpr auto kDrainTime = std::chrono::milliseconds(1000);
// The signals the supervisor handles while it runs.
constexpr int kHandled[] = {SIGINT, SIGTERM, SIGCHLD};

// Signals arrive on this pipe so the poll loop handles them outside the handler. A
// process-wide handler can only reach a global.
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

// One output stream of one worker, split into lines that get the stream's prefix.
struct Stream {
  int fd = -1;      // read end of the worker's pipe; -1 once at EOF (or never opened)
  int target = -1;  // our stdout or stderr
  std::string prefix;
  std::string pending;
};

struct Worker {
  int rank = 0;
  pid_t pid = -1;
  bool exited = false;
  int status = 0;
  Stream out, err;
};

// Passes on every complete line (and, at EOF or when too long, the rest). Without a
// prefix there is nothing to split: bytes pass at once, so a progress line redrawn in
// place with '\r' reaches a terminal as it is drawn.
void forward_lines(Stream& s, bool eof) {
  if (s.prefix.empty()) {
    write_all(s.target, s.pending);
    s.pending.clear();
    return;
  }
  std::string text;
  size_t start = 0;
  while (true) {
    const size_t nl = s.pending.find('\n', start);
    if (nl == std::string::npos) break;
    text += s.prefix;
    text.append(s.pending, start, nl + 1 - start);
    start = nl + 1;
  }
  s.pending.erase(0, start);
  if (!s.pending.empty() && (eof || s.pending.size() >= kMaxLine)) {
    text += s.prefix + s.pending + "\n";
    s.pending.clear();
  }
  if (!text.empty()) write_all(s.target, text);
}

// Reads what is available; closes the stream at EOF.
void read_stream(Stream& s) {
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
  forward_lines(s, s.fd < 0);
}

std::string errno_text() { return std::strerror(errno); }

// Forks worker `rank` in its own process group (so a terminal's Ctrl-C reaches the
// supervisor only, which forwards it once) with its output on pipes.
Worker spawn(const SpawnOptions& o, int master_port, int rank) {
  Worker w;
  w.rank = rank;
  const std::string rank_prefix = "[rank " + std::to_string(rank) + "] ";
  const bool rank_zero_only = o.output == WorkerOutput::kRankZeroOnly;
  // Other ranks' stdout goes to /dev/null in the child rather than through a pipe.
  const bool keep_stdout = !rank_zero_only || rank == 0;
  int out[2] = {-1, -1}, err[2] = {-1, -1};
  if ((keep_stdout && pipe2(out, O_CLOEXEC) != 0) || pipe2(err, O_CLOEXEC) != 0) {
    const std::string why = errno_text();
    for (int fd : {out[0], out[1]})
      if (fd >= 0) close(fd);
    throw std::runtime_error("[spawn] cannot create a pipe for rank " + std::to_string(rank) + ": " + why);
  }
  // Everything the child needs is built here: between fork and exec only
  // async-signal-safe calls are allowed if the parent has other threads (a CUDA
  // runtime's, say), so no setenv or string building there.
  std::vector<std::pair<std::string, std::string>> vars = o.env;
  vars.insert(vars.end(), {{"RANK", std::to_string(rank)},
                           {"WORLD_SIZE", std::to_string(o.nproc)},
                           {"LOCAL_RANK", std::to_string(rank)},
                           {"LOCAL_WORLD_SIZE", std::to_string(o.nproc)},
                           {"MASTER_ADDR", o.master_addr},
                           {"MASTER_PORT", std::to_string(master_port)}});
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const std::string key = entry.substr(0, entry.find('='));
    const bool overridden =
        std::any_of(vars.begin(), vars.end(), [&](const auto& kv) { return kv.first == key; });
    if (!overridden) env_strings.push_back(entry);
  }
  for (const auto& [k, v] : vars) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  for (const auto& a : o.command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const std::string exec_error = o.name + ": cannot run '" + o.command[0] + "': ";
  const int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);

  const pid_t parent = getpid();
  // Signals stay blocked across fork until the child has dropped our handlers: a
  // SIGTERM caught there would be written to our signal pipe and taken for our own.
  sigset_t all, previous;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &previous);
  const pid_t pid = fork();
  if (pid != 0) sigprocmask(SIG_SETMASK, &previous, nullptr);
  if (pid < 0) {
    const std::string why = errno_text();
    for (int fd : {out[0], out[1], err[0], err[1], null_fd})
      if (fd >= 0) close(fd);
    throw std::runtime_error("[spawn] cannot start rank " + std::to_string(rank) + ": fork failed: " + why);
  }
  if (pid == 0) {
    setpgid(0, 0);
    // A supervisor killed with SIGKILL cannot stop its workers; the kernel does it.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    for (int sig : {SIGINT, SIGTERM, SIGCHLD, SIGPIPE}) signal(sig, SIG_DFL);
    close(signal_pipe[0]);
    close(signal_pipe[1]);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    // Workers live in their own process groups, where reading a terminal would stop them.
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    dup2(keep_stdout ? out[1] : null_fd, STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    execvpe(argv[0], argv.data(), envp.data());
    const char* why = strerror(errno);
    (void)!write(STDERR_FILENO, exec_error.data(), exec_error.size());
    (void)!write(STDERR_FILENO, why, std::strlen(why));
    (void)!write(STDERR_FILENO, "\n", 1);
    _exit(127);
  }
  if (null_fd >= 0) close(null_fd);
  setpgid(pid, pid);  // also here, so the group exists before we might signal it
  w.pid = pid;
  if (keep_stdout) {
    close(out[1]);
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    w.out = Stream{out[0], STDOUT_FILENO, rank_zero_only ? "" : rank_prefix, {}};
  }
  close(err[1]);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  w.err = Stream{err[0], STDERR_FILENO, rank_zero_only && rank == 0 ? "" : rank_prefix, {}};
  return w;
}

class Supervisor {
 public:
  Supervisor(const SpawnOptions& o, int master_port) : o_(o), master_port_(master_port) {}

  int run() {
    start_ = Clock::now();
    try {
      for (int r = 0; r < o_.nproc; ++r) workers_.push_back(spawn(o_, master_port_, r));
    } catch (...) {
      // Rethrown below: the workers already started must not outlive the error.
      for (auto& w : workers_) {
        killpg(w.pid, SIGKILL);
        waitpid(w.pid, nullptr, 0);
        for (Stream* s : {&w.out, &w.err})
          if (s->fd >= 0) close(s->fd);
      }
      throw;
    }
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
        forward_lines(*s, true);
      }
    }
    if (failed_rank_) return exit_code(workers_[*failed_rank_].status);
    if (timed_out_) return 124;
    if (interrupt_signal_) return 128 + interrupt_signal_;
    return 0;
  }

 private:
  void say(const std::string& line) const { write_all(STDERR_FILENO, "[" + o_.name + "] " + line + "\n"); }

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
    if (!stopping_)
      kill_deadline_ =
          Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.grace_s));
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
    std::vector<Stream*> owners{nullptr};
    for (auto& w : workers_)
      for (Stream* s : {&w.out, &w.err})
        if (s->fd >= 0) {
          fds.push_back({s->fd, POLLIN, 0});
          owners.push_back(s);
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
      if (fds[i].revents) read_stream(*owners[i]);
  }

  const SpawnOptions& o_;
  int master_port_;
  std::vector<Worker> workers_;
  Clock::time_point start_;
  Clock::time_point kill_deadline_;
  bool stopping_ = false;
  bool killed_ = false;
  bool timed_out_ = false;
  int interrupt_signal_ = 0;
  std::optional<int> failed_rank_;
};

// Installs the supervisor's signal handling for its lifetime and restores the
// previous handlers (and closes the signal pipe) when it ends, also on a throw.
class SignalScope {
 public:
  SignalScope() {
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
      throw std::runtime_error("[spawn] cannot create a pipe: " + errno_text());
    struct sigaction sa{};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (size_t i = 0; i < std::size(kHandled); ++i) sigaction(kHandled[i], &sa, &previous_[i]);
    // A reader of our output that goes away must not kill the supervisor.
    struct sigaction ignore{};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGPIPE, &ignore, &previous_pipe_);
  }
  ~SignalScope() {
    for (size_t i = 0; i < std::size(kHandled); ++i) sigaction(kHandled[i], &previous_[i], nullptr);
    sigaction(SIGPIPE, &previous_pipe_, nullptr);
    close(signal_pipe[0]);
    close(signal_pipe[1]);
    signal_pipe[0] = signal_pipe[1] = -1;
  }
  SignalScope(const SignalScope&) = delete;
  SignalScope& operator=(const SignalScope&) = delete;

 private:
  struct sigaction previous_[std::size(kHandled)] {};
  struct sigaction previous_pipe_ {};
};

}  // namespace

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
  const int saved = errno;
  close(fd);
  errno = saved;
  return port;
}

int run_workers(const SpawnOptions& options) {
  if (options.nproc < 1)
    throw std::invalid_argument("[spawn] expected nproc >= 1, got " + std::to_string(options.nproc));
  if (options.command.empty()) throw std::invalid_argument("[spawn] expected a program to run, got an empty command");
  if (options.master_port < 0 || options.master_port > 65535)
    throw std::invalid_argument("[spawn] expected master_port in [0, 65535], got " +
                                std::to_string(options.master_port));
  if (!(options.timeout_s >= 0) || !(options.grace_s >= 0))
    throw std::invalid_argument("[spawn] expected timeout_s >= 0 and grace_s >= 0, got " + seconds(options.timeout_s) +
                                " and " + seconds(options.grace_s));
  int port = options.master_port;
  if (port == 0) {
    port = pick_free_port();
    if (port < 0) throw std::runtime_error("[spawn] cannot find a free port: " + errno_text());
  }
  SignalScope signals;
  return Supervisor(options, port).run();
}

}  // namespace tandem::comm
