
// ============================================================================================
// 1b. Crypto: SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) for the peer handshake
// ============================================================================================
//
// Written from the standards, checked against their test vectors (tests/test_peer_auth.cpp:
// NIST's SHA-256 examples, RFC 4231's HMAC cases). Used only to authenticate peers (section
// 5: the handshake and the MAC on every frame); nothing here encrypts.

#include <sys/random.h>

namespace raft {
namespace detail {

class Sha256 {
 public:
  static constexpr std::size_t kDigestBytes = 32;
  static constexpr std::size_t kBlockBytes = 64;
  using Digest = std::array<std::uint8_t, kDigestBytes>;

  Sha256() { reset(); }
  void reset() {
    static constexpr std::uint32_t kInitial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                                  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::memcpy(state_, kInitial, sizeof state_);
    buffered_ = 0;
    total_bytes_ = 0;
  }
  void update(const void* data, std::size_t n) {
    if (n == 0) return;
    const auto* p = static_cast<const std::uint8_t*>(data);
    total_bytes_ += n;
    if (buffered_ > 0) {
      const std::size_t take = std::min(n, kBlockBytes - buffered_);
      std::memcpy(block_ + buffered_, p, take);
      buffered_ += take;
      p += take;
      n -= take;
      if (buffered_ < kBlockBytes) return;
      compress(block_);
      buffered_ = 0;
    }
    for (; n >= kBlockBytes; p += kBlockBytes, n -= kBlockBytes) compress(p);
    std::memcpy(block_, p, n);
    buffered_ = n;
  }
  void update(std::string_view s) { update(s.data(), s.size()); }
  /// Pads (a 1 bit, zeros, the length in bits as 64 bits big-endian: FIPS 180-4 5.1.1) and
  /// returns the digest. The object must be reset() before it is used again.
  Digest finish() {
    const std::uint64_t bits = total_bytes_ * 8;
    const std::uint8_t one = 0x80;
    update(&one, 1);
    const std::uint8_t zero = 0;
    while (buffered_ != kBlockBytes - 8) update(&zero, 1);
    std::uint8_t length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<std::uint8_t>(bits >> (56 - 8 * i));
    update(length, 8);
    Digest d;
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 4; ++j) d[static_cast<std::size_t>(4 * i + j)] = static_cast<std::uint8_t>(state_[i] >> (24 - 8 * j));
    return d;
  }
  static Digest of(std::string_view s) {
    Sha256 h;
    h.update(s);
    return h.finish();
  }

 private:
  static std::uint32_t rotr(std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  // FIPS 180-4 6.2.2: the message schedule and 64 rounds over one 512-bit block.
  void compress(const std::uint8_t* block) {
    static constexpr std::uint32_t K[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    std::uint32_t w[64];
    for (int t = 0; t < 16; ++t)
      w[t] = static_cast<std::uint32_t>(block[4 * t]) << 24 | static_cast<std::uint32_t>(block[4 * t + 1]) << 16 |
             static_cast<std::uint32_t>(block[4 * t + 2]) << 8 | static_cast<std::uint32_t>(block[4 * t + 3]);
    for (int t = 16; t < 64; ++t) {
      const std::uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const std::uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    std::uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
    std::uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
    for (int t = 0; t < 64; ++t) {
      const std::uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + w[t];
      const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    state_[0] += a;
    state_[1] += b;
    state_[2] += c;
    state_[3] += d;
    state_[4] += e;
    state_[5] += f;
    state_[6] += g;
    state_[7] += h;
  }

  std::uint32_t state_[8];
  std::uint8_t block_[kBlockBytes];
  std::size_t buffered_ = 0;
  std::uint64_t total_bytes_ = 0;
};

/// HMAC-SHA256 with one key (RFC 2104): H((K ^ opad) || H((K ^ ipad) || message)). The
/// hashes of the two padded keys are computed once, so a MAC costs the message's blocks plus
/// two: the peer runtime MACs every frame with one of these.
class HmacSha256 {
 public:
  explicit HmacSha256(std::string_view key = {}) {
    std::uint8_t k[Sha256::kBlockBytes] = {};
    if (key.size() > Sha256::kBlockBytes) {
      const Sha256::Digest d = Sha256::of(key);  // a long key is hashed first
      std::memcpy(k, d.data(), d.size());
    } else if (!key.empty()) {  // (an empty view's data() may be null)
      std::memcpy(k, key.data(), key.size());
    }
    std::uint8_t pad[Sha256::kBlockBytes];
    for (std::size_t i = 0; i < sizeof pad; ++i) pad[i] = static_cast<std::uint8_t>(k[i] ^ 0x36);
    inner_.update(pad, sizeof pad);
    for (std::size_t i = 0; i < sizeof pad; ++i) pad[i] = static_cast<std::uint8_t>(k[i] ^ 0x5c);
    outer_.update(pad, sizeof pad);
  }
  /// A hash with the inner padded key absorbed: update() it with the message, then finish().
  Sha256 begin() const { return inner_; }
  Sha256::Digest finish(Sha256& inner) const {
    const Sha256::Digest in = inner.finish();
    Sha256 out = outer_;
    out.update(in.data(), in.size());
    return out.finish();
  }
  Sha256::Digest mac(std::string_view message) const {
    Sha256 h = begin();
    h.update(message);
    return finish(h);
  }

 private:
  Sha256 inner_, outer_;
};

/// Compares in time independent of where they differ: a forger learns nothing from timing.
inline bool digests_equal(const std::uint8_t* a, const std::uint8_t* b, std::size_t n) {
  unsigned diff = 0;
  for (std::size_t i = 0; i < n; ++i) diff |= static_cast<unsigned>(a[i] ^ b[i]);
  return diff == 0;
}

inline std::string to_hex(const std::uint8_t* p, std::size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (std::size_t i = 0; i < n; ++i) {
    s[2 * i] = kDigits[p[i] >> 4];
    s[2 * i + 1] = kDigits[p[i] & 15];
  }
  return s;
}
inline std::string to_hex(const Sha256::Digest& d) { return to_hex(d.data(), d.size()); }

/// Lower-case hex of exactly out.size() bytes; false for anything else.
template <std::size_t N>
bool from_hex(std::string_view s, std::array<std::uint8_t, N>& out) {
  if (s.size() != 2 * N) return false;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < N; ++i) {
    const int hi = digit(s[2 * i]), lo = digit(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return true;
}

/// `n` bytes from the kernel's CSPRNG, through getrandom(2) (what /dev/urandom reads, without
/// a file descriptor: it works when a flood of connections has used them all up), falling back
/// to /dev/urandom where getrandom does not exist. Unpredictable with no state of our own to
/// seed, and safe across fork (std::random_device may, by the standard, be a deterministic
/// engine). Throws if neither can be read: never a weak nonce.
inline std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::getrandom(&out[got], n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<std::size_t>(r);
  }
  if (got == n) return out;
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot read random bytes: " + std::string(std::strerror(errno)));
  while (got < n) {
    const ssize_t r = ::read(fd, &out[got], n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      ::close(fd);
      throw std::runtime_error("cannot read /dev/urandom");
    }
    got += static_cast<std::size_t>(r);
  }
  ::close(fd);
  return out;
}

}  // namespace detail
}  // namespace raft
