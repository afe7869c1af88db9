// The key-value stores: TCPStore (a poll()-driven server thread in rank 0's process
// and a blocking client in every rank, speaking a length-prefixed binary protocol)
// and HashStore (one process, a map under a mutex).
#include "comm/store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>

namespace tandem::comm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Requests and replies are frames: a u32 payload length, then the payload. A request
// payload starts with a Command byte, a reply payload with a Status byte.
enum class Command : uint8_t { kSet = 1, kGet = 2, kAdd = 3, kWait = 4, kCheck = 5 };
enum class Status : uint8_t { kOk = 0, kTimeout = 1, kError = 2 };

// Larger frames mean a corrupt stream or a peer that is not a store client.
constexpr uint32_t kMaxFrame = 1u << 30;
// A get/wait reply is due when the server's deadline fires; the client waits this much
// longer before it decides the server itself is unresponsive.
constexpr milliseconds kReplyGrace{2000};

std::string errno_text(int err) { return std::strerror(err); }

// Little-endian encoding, so a store works between hosts of any byte order.
class Writer {
 public:
  void u8(uint8_t v) { buf_.push_back(v); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) buf_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void i64(int64_t v) {
    const auto u = static_cast<uint64_t>(v);
    for (int i = 0; i < 8; ++i) buf_.push_back(static_cast<uint8_t>(u >> (8 * i)));
  }
  void bytes(const uint8_t* p, size_t n) {
    u32(static_cast<uint32_t>(n));
    buf_.insert(buf_.end(), p, p + n);
  }
  void str(const std::string& s) { bytes(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }
  void strs(const std::vector<std::string>& v) {
    u32(static_cast<uint32_t>(v.size()));
    for (const auto& s : v) str(s);
  }
  /// The frame: length prefix + payload.
  std::vector<uint8_t> frame() const {
    std::vector<uint8_t> out;
    out.reserve(buf_.size() + 4);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(buf_.size() >> (8 * i)));
    out.insert(out.end(), buf_.begin(), buf_.end());
    return out;
  }

 private:
  std::vector<uint8_t> buf_;
};

uint32_t decode_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

// Throws std::runtime_error on a truncated payload (the frame is then dropped).
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  uint8_t u8() {
    need(1);
    return p_[pos_++];
  }
  uint32_t u32() {
    need(4);
    const uint32_t v = decode_u32(p_ + pos_);
    pos_ += 4;
    return v;
  }
  int64_t i64() {
    need(8);
    uint64_t u = 0;
    for (int i = 0; i < 8; ++i) u |= uint64_t(p_[pos_ + i]) << (8 * i);
    pos_ += 8;
    return static_cast<int64_t>(u);
  }
  std::vector<uint8_t> bytes() {
    const uint32_t n = u32();
    need(n);
    std::vector<uint8_t> v(p_ + pos_, p_ + pos_ + n);
    pos_ += n;
    return v;
  }
  std::string str() {
    const uint32_t n = u32();
    need(n);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return s;
  }
  std::vector<std::string> strs() {
    const uint32_t n = u32();
    std::vector<std::string> v;
    for (uint32_t i = 0; i < n; ++i) v.push_back(str());
    return v;
  }

 private:
  void need(size_t k) const {
    if (n_ - pos_ < k) throw std::runtime_error("[store] truncated message");
  }
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
};

std::string quote_keys(const std::vector<std::string>& keys) {
  std::string s;
  for (size_t i = 0; i < keys.size(); ++i) s += (i ? ", '" : "'") + keys[i] + "'";
  return s;
}

std::string describe_wait(const std::vector<std::string>& keys) {
  return keys.size() == 1 ? "waiting for key " + quote_keys(keys) : "waiting for keys " + quote_keys(keys);
}

// The value `add` keeps at a key: the counter as decimal text, as torch's store does,
// so get() on a counter returns something readable.
std::vector<uint8_t> encode_counter(int64_t v) {
  const std::string s = std::to_string(v);
  return {s.begin(), s.end()};
}

// Parses a counter; false when the value is not an integer.
bool decode_counter(const std::vector<uint8_t>& value, int64_t* out) {
  const char* b = reinterpret_cast<const char*>(value.data());
  const char* e = b + value.size();
  auto [ptr, ec] = std::from_chars(b, e, *out);
  return ec == std::errc() && ptr == e && b != e;
}

// Applies `delta` to the counter at `key`; throws std::invalid_argument when the key
// holds something else.
int64_t apply_add(std::unordered_map<std::string, std::vector<uint8_t>>& data, const std::string& key,
                  int64_t delta) {
  int64_t current = 0;
  auto it = data.find(key);
  if (it != data.end() && !decode_counter(it->second, &current))
    throw std::invalid_argument("[store] add: expected key '" + key + "' to hold an integer counter, got " +
                                std::to_string(it->second.size()) + " bytes of other data");
  current += delta;
  data[key] = encode_counter(current);
  return current;
}

void check_timeout(milliseconds timeout, const char* who) {
  if (timeout.count() <= 0)
    throw std::invalid_argument(std::string("[") + who + "] expected a positive timeout, got " +
                                std::to_string(timeout.count()) + " ms");
}

void set_nonblocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
    throw std::runtime_error("[store] fcntl(O_NONBLOCK) failed: " + errno_text(errno));
}

int poll_timeout_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count() + 1;
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1'000'000));
}

// ---- server ------------------------------------------------------------------------

// Serves every client from one thread: poll() over the listening socket, the client
// sockets and a wake-up pipe. get/wait requests that cannot be answered yet become
// waiters, released by a later set/add or by their deadline; a connection's further
// requests wait behind its pending one so replies keep their order.
class StoreServer {
 public:
  explicit StoreServer(int port) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) throw std::runtime_error("[store] socket() failed: " + errno_text(errno));
    // SO_REUSEADDR lets a restarted job bind while the last one's sockets sit in
    // TIME_WAIT; a port with a live listener still fails with EADDRINUSE.
    const int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      const int err = errno;
      close(listen_fd_);
      std::string hint = err == EADDRINUSE ? " (another process, perhaps an earlier job, holds it; pick another "
                                             "MASTER_PORT or --master-port 0)"
                                           : "";
      throw std::runtime_error("[store] rank 0 cannot listen on port " + std::to_string(port) + ": " +
                               errno_text(err) + hint);
    }
    if (listen(listen_fd_, SOMAXCONN) != 0) {
      const int err = errno;
      close(listen_fd_);
      throw std::runtime_error("[store] listen() on port " + std::to_string(port) + " failed: " + errno_text(err));
    }
    set_nonblocking(listen_fd_);
    if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
      const int err = errno;
      close(listen_fd_);
      throw std::runtime_error("[store] pipe() failed: " + errno_text(err));
    }
    thread_ = std::thread([this] { run(); });
  }

  ~StoreServer() {
    const char byte = 1;
    (void)!write(wake_[1], &byte, 1);
    thread_.join();
    // Replies already decided (a set that released waiters just before shutdown) still
    // go out if the socket takes them now.
    for (auto& [id, conn] : conns_) {
      flush(conn);
      close(conn.fd);
    }
    close(listen_fd_);
    close(wake_[0]);
    close(wake_[1]);
  }

  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;

 private:
  struct Conn {
    int fd = -1;
    std::vector<uint8_t> in;
    std::vector<uint8_t> out;
    bool waiting = false;  // a get/wait of this connection is pending
  };
  struct Waiter {
    uint64_t conn;
    Command cmd;
    std::vector<std::string> keys;
    Clock::time_point deadline;
  };

  void run() {
    try {
      loop();
    } catch (const std::exception& e) {
      // Only resource exhaustion gets here; clients then see their connection close.
      std::fprintf(stderr, "[store] server thread stopped: %s\n", e.what());
    }
  }

  void loop() {
    std::vector<pollfd> fds;
    std::vector<uint64_t> ids;
    while (true) {
      fds.clear();
      ids.clear();
      fds.push_back({wake_[0], POLLIN, 0});
      fds.push_back({listen_fd_, POLLIN, 0});
      for (auto& [id, conn] : conns_) {
        fds.push_back({conn.fd, static_cast<short>(POLLIN | (conn.out.empty() ? 0 : POLLOUT)), 0});
        ids.push_back(id);
      }
      int timeout = -1;
      for (const auto& w : waiters_) timeout = timeout < 0 ? poll_timeout_ms(w.deadline) : std::min(timeout, poll_timeout_ms(w.deadline));
      const int n = poll(fds.data(), fds.size(), timeout);
      if (n < 0 && errno != EINTR) throw std::runtime_error("poll() failed: " + errno_text(errno));
      if (n > 0) {
        if (fds[0].revents) return;
        if (fds[1].revents & POLLIN) accept_clients();
        for (size_t i = 2; i < fds.size(); ++i) {
          if (fds[i].revents == 0) continue;
          auto it = conns_.find(ids[i - 2]);
          if (it == conns_.end()) continue;
          bool alive = true;
          if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) alive = read_from(it->first, it->second);
          if (alive && (fds[i].revents & POLLOUT)) alive = flush(it->second);
          if (!alive) drop(it->first);
        }
      }
      expire_waiters();
    }
  }

  void accept_clients() {
    while (true) {
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN: no more pending; other errors: the client gave up
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      conns_[next_id_++].fd = fd;
    }
  }

  // Reads what is available and serves every complete request; false when the client
  // closed or sent garbage.
  bool read_from(uint64_t id, Conn& conn) {
    uint8_t buf[65536];
    while (true) {
      const ssize_t got = recv(conn.fd, buf, sizeof(buf), 0);
      if (got > 0) {
        conn.in.insert(conn.in.end(), buf, buf + got);
        continue;
      }
      if (got == 0) return false;
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return false;
    }
    return serve_buffered(id, conn);
  }

  bool serve_buffered(uint64_t id, Conn& conn) {
    size_t pos = 0;
    while (!conn.waiting && conn.in.size() - pos >= 4) {
      const uint32_t len = decode_u32(conn.in.data() + pos);
      if (len == 0 || len > kMaxFrame) return false;
      if (conn.in.size() - pos - 4 < len) break;
      try {
        handle(id, conn, Reader(conn.in.data() + pos + 4, len));
      } catch (const std::runtime_error&) {
        return false;  // malformed request: not a store client
      }
      pos += 4 + len;
    }
    conn.in.erase(conn.in.begin(), conn.in.begin() + static_cast<std::ptrdiff_t>(pos));
    return flush(conn);
  }

  void handle(uint64_t id, Conn& conn, Reader r) {
    const auto cmd = static_cast<Command>(r.u8());
    Writer reply;
    switch (cmd) {
      case Command::kSet: {
        std::string key = r.str();
        data_[key] = r.bytes();
        reply.u8(static_cast<uint8_t>(Status::kOk));
        queue(conn, reply);
        release_waiters();
        return;
      }
      case Command::kAdd: {
        const std::string key = r.str();
        const int64_t delta = r.i64();
        try {
          const int64_t v = apply_add(data_, key, delta);
          reply.u8(static_cast<uint8_t>(Status::kOk));
          reply.i64(v);
        } catch (const std::invalid_argument& e) {
          reply.u8(static_cast<uint8_t>(Status::kError));
          reply.str(e.what());
        }
        queue(conn, reply);
        release_waiters();
        return;
      }
      case Command::kCheck: {
        const auto keys = r.strs();
        reply.u8(static_cast<uint8_t>(Status::kOk));
        reply.u8(missing(keys).empty() ? 1 : 0);
        queue(conn, reply);
        return;
      }
      case Command::kGet:
      case Command::kWait: {
        std::vector<std::string> keys;
        if (cmd == Command::kGet) {
          keys.push_back(r.str());
        } else {
          keys = r.strs();
        }
        const milliseconds timeout{r.i64()};
        Waiter w{id, cmd, std::move(keys), Clock::now() + timeout};
        if (missing(w.keys).empty()) {
          answer(conn, w);
        } else {
          conn.waiting = true;
          waiters_.push_back(std::move(w));
        }
        return;
      }
    }
    throw std::runtime_error("[store] unknown command");
  }

  std::vector<std::string> missing(const std::vector<std::string>& keys) const {
    std::vector<std::string> out;
    for (const auto& k : keys)
      if (!data_.count(k)) out.push_back(k);
    return out;
  }

  void answer(Conn& conn, const Waiter& w) {
    Writer reply;
    reply.u8(static_cast<uint8_t>(Status::kOk));
    if (w.cmd == Command::kGet) {
      const auto& v = data_.at(w.keys[0]);
      reply.bytes(v.data(), v.size());
    }
    queue(conn, reply);
  }

  // Answers every waiter whose keys are now all set, then serves requests that queued
  // up behind it on the same connection.
  void release_waiters() {
    std::vector<uint64_t> released;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (!missing(it->keys).empty()) {
        ++it;
        continue;
      }
      auto c = conns_.find(it->conn);
      if (c != conns_.end()) {
        answer(c->second, *it);
        c->second.waiting = false;
        released.push_back(it->conn);
      }
      it = waiters_.erase(it);
    }
    resume(released);
  }

  void expire_waiters() {
    const auto now = Clock::now();
    std::vector<uint64_t> released;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->deadline > now) {
        ++it;
        continue;
      }
      auto c = conns_.find(it->conn);
      if (c != conns_.end()) {
        Writer reply;
        reply.u8(static_cast<uint8_t>(Status::kTimeout));
        reply.strs(missing(it->keys));
        queue(c->second, reply);
        c->second.waiting = false;
        released.push_back(it->conn);
      }
      it = waiters_.erase(it);
    }
    resume(released);
  }

  void resume(const std::vector<uint64_t>& ids) {
    for (uint64_t id : ids) {
      auto c = conns_.find(id);
      if (c == conns_.end()) continue;
      // Serving buffered requests can release further waiters (a set), which recurses
      // here at most once per connection that was waiting.
      if (!serve_buffered(id, c->second) || !flush(c->second)) drop(id);
    }
  }

  void queue(Conn& conn, const Writer& reply) {
    const auto frame = reply.frame();
    conn.out.insert(conn.out.end(), frame.begin(), frame.end());
  }

  // Writes what the socket takes now; the rest goes when poll() reports POLLOUT.
  bool flush(Conn& conn) {
    size_t pos = 0;
    while (pos < conn.out.size()) {
      const ssize_t sent = send(conn.fd, conn.out.data() + pos, conn.out.size() - pos, MSG_NOSIGNAL);
      if (sent > 0) {
        pos += static_cast<size_t>(sent);
        continue;
      }
      if (sent < 0 && errno == EINTR) continue;
      if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      return false;
    }
    conn.out.erase(conn.out.begin(), conn.out.begin() + static_cast<std::ptrdiff_t>(pos));
    return true;
  }

  void drop(uint64_t id) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    close(it->second.fd);
    conns_.erase(it);
    waiters_.remove_if([id](const Waiter& w) { return w.conn == id; });
  }

  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::thread thread_;
  uint64_t next_id_ = 0;
  std::map<uint64_t, Conn> conns_;
  std::list<Waiter> waiters_;
  std::unordered_map<std::string, std::vector<uint8_t>> data_;
};

// ---- client ------------------------------------------------------------------------

class TCPStore final : public Store {
 public:
  explicit TCPStore(const TCPStoreOptions& options) : options_(options) {
    check_timeout(options.timeout, "store");
    if (options.port < 1 || options.port > 65535)
      throw std::invalid_argument("[store] expected a port in [1, 65535], got " + std::to_string(options.port));
    if (options.world_size < 1)
      throw std::invalid_argument("[store] expected a world size >= 1, got " + std::to_string(options.world_size));
    if (options.host.empty() && !options.is_server)
      throw std::invalid_argument("[store] expected the store's host name or address, got an empty string");
    if (options.is_server) server_ = std::make_unique<StoreServer>(options.port);
    // Rank 0 reaches its own server over loopback, whatever address the others use.
    connect_host_ = options.is_server ? "127.0.0.1" : options.host;
    where_ = "store " + options.host + ":" + std::to_string(options.port);
    if (options.rank >= 0) where_ = "rank " + std::to_string(options.rank) + ", " + where_;
    connect();
  }

  ~TCPStore() override {
    if (fd_ >= 0) close(fd_);
    server_.reset();  // closes every client's connection: they fail instead of hanging
  }

  void set(const std::string& key, const std::vector<uint8_t>& value) override {
    if (value.size() > kMaxFrame / 2)
      throw std::invalid_argument("[store] set: expected a value of at most " + std::to_string(kMaxFrame / 2) +
                                  " bytes, got " + std::to_string(value.size()));
    Writer w;
    w.u8(static_cast<uint8_t>(Command::kSet));
    w.str(key);
    w.bytes(value.data(), value.size());
    request(w, "setting key '" + key + "'", options_.timeout);
  }

  std::vector<uint8_t> get(const std::string& key) override {
    Writer w;
    w.u8(static_cast<uint8_t>(Command::kGet));
    w.str(key);
    w.i64(options_.timeout.count());
    const auto reply = request(w, describe_wait({key}), options_.timeout + kReplyGrace);
    Reader r(reply.data(), reply.size());
    expect_ok(r, describe_wait({key}));
    return r.bytes();
  }

  int64_t add(const std::string& key, int64_t delta) override {
    Writer w;
    w.u8(static_cast<uint8_t>(Command::kAdd));
    w.str(key);
    w.i64(delta);
    const auto reply = request(w, "adding to key '" + key + "'", options_.timeout);
    Reader r(reply.data(), reply.size());
    expect_ok(r, "adding to key '" + key + "'");
    return r.i64();
  }

  void wait(const std::vector<std::string>& keys) override {
    if (keys.empty()) return;
    Writer w;
    w.u8(static_cast<uint8_t>(Command::kWait));
    w.strs(keys);
    w.i64(options_.timeout.count());
    const auto reply = request(w, describe_wait(keys), options_.timeout + kReplyGrace);
    Reader r(reply.data(), reply.size());
    expect_ok(r, describe_wait(keys));
  }

  bool check(const std::vector<std::string>& keys) override {
    Writer w;
    w.u8(static_cast<uint8_t>(Command::kCheck));
    w.strs(keys);
    const auto reply = request(w, "checking keys " + quote_keys(keys), options_.timeout);
    Reader r(reply.data(), reply.size());
    expect_ok(r, "checking keys");
    return r.u8() != 0;
  }

  std::chrono::milliseconds timeout() const override { return options_.timeout; }

 private:
  // Connects, retrying (rank 0 may not be listening yet) until the timeout.
  void connect() {
    const auto deadline = Clock::now() + options_.timeout;
    const std::string port = std::to_string(options_.port);
    std::string last_error = "no attempt made";
    auto backoff = milliseconds(10);
    while (true) {
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* list = nullptr;
      const int gai = getaddrinfo(connect_host_.c_str(), port.c_str(), &hints, &list);
      if (gai != 0) {
        last_error = std::string("cannot resolve '") + connect_host_ + "': " + gai_strerror(gai);
      } else {
        for (addrinfo* a = list; a != nullptr && fd_ < 0; a = a->ai_next) try_connect(a, deadline, &last_error);
        freeaddrinfo(list);
      }
      if (fd_ >= 0) return;
      if (Clock::now() + backoff >= deadline)
        throw std::runtime_error("[store] could not connect within " + std::to_string(options_.timeout.count()) +
                                 " ms (" + where_ + "): " + last_error + " (is rank 0 running and MASTER_ADDR/MASTER_PORT right?)");
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, milliseconds(500));
    }
  }

  void try_connect(const addrinfo* a, Clock::time_point deadline, std::string* error) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      *error = "socket() failed: " + errno_text(errno);
      return;
    }
    int err = 0;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        const int n = poll(&p, 1, poll_timeout_ms(deadline));
        socklen_t len = sizeof(err);
        if (n <= 0) {
          err = ETIMEDOUT;
        } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
          err = errno;
        }
      }
    }
    if (err != 0) {
      *error = errno_text(err);
      close(fd);
      return;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fd_ = fd;
  }

  // Sends one request and returns the reply payload. One request at a time per store;
  // a broken connection stays broken (the server is gone or the stream is out of step).
  std::vector<uint8_t> request(const Writer& w, const std::string& what, milliseconds patience) {
    std::lock_guard<std::mutex> lock(mu_);
    if (fd_ < 0)
      throw std::runtime_error("[store] cannot start " + what + ": the connection to the store was lost earlier (" +
                               where_ + ")");
    const auto deadline = Clock::now() + patience;
    const auto frame = w.frame();
    io(const_cast<uint8_t*>(frame.data()), frame.size(), true, deadline, patience, what);
    uint8_t header[4];
    io(header, 4, false, deadline, patience, what);
    const uint32_t len = decode_u32(header);
    if (len == 0 || len > kMaxFrame) fail("malformed reply while " + what + " (is that port a Tandem store?)");
    std::vector<uint8_t> reply(len);
    io(reply.data(), len, false, deadline, patience, what);
    return reply;
  }

  void io(uint8_t* p, size_t n, bool sending, Clock::time_point deadline, milliseconds patience,
          const std::string& what) {
    size_t done = 0;
    while (done < n) {
      const ssize_t k = sending ? send(fd_, p + done, n - done, MSG_NOSIGNAL) : recv(fd_, p + done, n - done, 0);
      if (k > 0) {
        done += static_cast<size_t>(k);
        continue;
      }
      if (k == 0) fail("lost the connection while " + what + ": the store closed it (did rank 0 exit?)");
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        fail("lost the connection while " + what + ": " + errno_text(errno) + " (did rank 0 exit?)");
      pollfd pfd{fd_, static_cast<short>(sending ? POLLOUT : POLLIN), 0};
      const int ready = poll(&pfd, 1, poll_timeout_ms(deadline));
      if (ready == 0)
        fail("no reply from the store within " + std::to_string(patience.count()) + " ms while " + what +
             " (is rank 0 stuck?)");
      if (ready < 0 && errno != EINTR) fail("poll() failed while " + what + ": " + errno_text(errno));
    }
  }

  // Closes the connection (its byte stream is no longer in step) and throws.
  [[noreturn]] void fail(const std::string& msg) {
    close(fd_);
    fd_ = -1;
    throw std::runtime_error("[store] " + msg + " (" + where_ + ")");
  }

  void expect_ok(Reader& r, const std::string& what) {
    const auto status = static_cast<Status>(r.u8());
    if (status == Status::kOk) return;
    if (status == Status::kTimeout) {
      const auto keys = r.strs();
      throw std::runtime_error("[store] timed out after " + std::to_string(options_.timeout.count()) + " ms " +
                               describe_wait(keys) + " (" + where_ + ")");
    }
    if (status == Status::kError) throw std::invalid_argument(r.str());
    throw std::runtime_error("[store] unexpected reply status while " + what + " (" + where_ + ")");
  }

  TCPStoreOptions options_;
  std::unique_ptr<StoreServer> server_;
  std::string connect_host_;
  std::string where_;
  std::mutex mu_;
  int fd_ = -1;
};

// ---- in-process store --------------------------------------------------------------

class HashStore final : public Store {
 public:
  explicit HashStore(milliseconds timeout) : timeout_(timeout) { check_timeout(timeout, "store"); }

  void set(const std::string& key, const std::vector<uint8_t>& value) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      data_[key] = value;
    }
    cv_.notify_all();
  }

  std::vector<uint8_t> get(const std::string& key) override {
    std::unique_lock<std::mutex> lock(mu_);
    wait_locked(lock, {key});
    return data_.at(key);
  }

  int64_t add(const std::string& key, int64_t delta) override {
    int64_t v;
    {
      std::lock_guard<std::mutex> lock(mu_);
      v = apply_add(data_, key, delta);
    }
    cv_.notify_all();
    return v;
  }

  void wait(const std::vector<std::string>& keys) override {
    std::unique_lock<std::mutex> lock(mu_);
    wait_locked(lock, keys);
  }

  bool check(const std::vector<std::string>& keys) override {
    std::lock_guard<std::mutex> lock(mu_);
    return missing(keys).empty();
  }

  std::chrono::milliseconds timeout() const override { return timeout_; }

 private:
  std::vector<std::string> missing(const std::vector<std::string>& keys) const {
    std::vector<std::string> out;
    for (const auto& k : keys)
      if (!data_.count(k)) out.push_back(k);
    return out;
  }

  void wait_locked(std::unique_lock<std::mutex>& lock, const std::vector<std::string>& keys) {
    const bool ok = cv_.wait_for(lock, timeout_, [&] { return missing(keys).empty(); });
    if (!ok)
      throw std::runtime_error("[store] timed out after " + std::to_string(timeout_.count()) + " ms " +
                               describe_wait(missing(keys)) + " (hash store)");
  }

  milliseconds timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<std::string, std::vector<uint8_t>> data_;
};

}  // namespace

std::shared_ptr<Store> make_tcp_store(const TCPStoreOptions& options) { return std::make_shared<TCPStore>(options); }

std::shared_ptr<Store> make_hash_store(std::chrono::milliseconds timeout) {
  return std::make_shared<HashStore>(timeout);
}

}  // namespace tandem::comm
