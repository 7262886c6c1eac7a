#include "hemexp/io/atomic_file.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "hemexp/io/error.hpp"

namespace hemexp {

namespace fs = std::filesystem;

fs::path temporary_path_for(const fs::path& target) {
  static std::atomic<unsigned> counter{0};
  // Keep the extension(s) so that ITK picks the right writer for the temporary file.
  const std::string name = target.filename().string();
  return target.parent_path() /
         (".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" + name);
}

void write_atomically(const fs::path& target, const std::function<void(const fs::path&)>& write) {
  // A target that exists and is not a regular file (/dev/null, a named pipe, /dev/stdout) is
  // written into as it is: renaming over it would replace a device with a file.
  std::error_code ec;
  // /dev/stdout, /dev/fd/N, /proc/...: written in place, whatever they lead to (renaming beside
  // the file a shell redirected them to would swap that file under the shell).
  const std::string text = target.lexically_normal().string();
  if (text.rfind("/dev/", 0) == 0 || text.rfind("/proc/", 0) == 0) {
    write(target);
    return;
  }
  // Through a user's symbolic link to a file: that file, written beside it and renamed, so that
  // the link stays a link (a dangling or looping link is replaced, as before).
  if (fs::is_symlink(fs::symlink_status(target, ec))) {
    const fs::path real = fs::canonical(target, ec);
    if (!ec && real != target) return write_atomically(real, write);
  }
  if (const fs::file_status st = fs::status(target, ec); !ec && fs::exists(st) && !fs::is_regular_file(st)) {
    if (fs::is_directory(st)) throw IoError("cannot write " + target.string() + ": it is a folder");
    write(target);
    return;
  }
  const fs::path tmp = temporary_path_for(target);
  try {
    write(tmp);
    fs::rename(tmp, target);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

void write_text_atomically(const fs::path& target, const std::string& contents) {
  write_atomically(target, [&](const fs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    errno = 0;
    out << contents;
    out.flush();
    if (!out)  // errno says why: "No space left on device", "File too large", "Disk quota exceeded"
      throw IoError("writing " + target.string() + ": cannot write file" + (errno ? std::string(": ") + std::strerror(errno) : ""));
  });
}

void remove_temporaries(const fs::path& dir, const std::vector<std::string>& names) {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string f = it->path().filename().string();
    if (f.rfind(".tmp-", 0) != 0) continue;
    bool named = names.empty();
    for (const std::string& n : names)
      named = named || (f.size() > n.size() + 1 && f.compare(f.size() - n.size() - 1, std::string::npos, "-" + n) == 0);
    if (named) stale.push_back(it->path());
  }
  for (const fs::path& p : stale) fs::remove(p, ec);
}

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot read " + path.string());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

FileLock::FileLock(const fs::path& path, const std::string& holder, Mode mode) {
  bool writable = true;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  int error = fd_ < 0 ? errno : 0;
  if (fd_ < 0 && error == EACCES) {  // another user's lock file in a shared folder
    writable = false;
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    // No lock file to read either (a folder the user may not write in): the first reason is the one.
    if (fd_ < 0 && errno != ENOENT) error = errno;
  }
  if (fd_ < 0) throw IoError("cannot open " + path.string() + ": " + std::strerror(error));
  if (::flock(fd_, (mode == Mode::shared ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0) {
    state_ = State::held;
    // Best effort: the lock itself is what protects; the text only names the holder.
    if (writable && ::ftruncate(fd_, 0) == 0 && mode == Mode::exclusive &&
        ::pwrite(fd_, holder.data(), holder.size(), 0) == ssize_t(holder.size()))
      ::fsync(fd_);  // so that a process on another node reads the name (NFS)
    return;
  }
  error = errno;
  if (error == EWOULDBLOCK) {
    state_ = State::busy;
    std::string text(512, '\0');
    const ssize_t n = ::pread(fd_, text.data(), text.size(), 0);
    text.resize(n > 0 ? size_t(n) : 0);
    detail_ = text;
  } else {
    state_ = State::unsupported;  // ENOLCK, EINVAL, EOPNOTSUPP: a file system without flock; EBADF: read-only on NFS
    detail_ = std::strerror(error);
  }
  ::close(fd_);
  fd_ = -1;
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock; the file stays (removing it would race a new holder)
}

}  // namespace hemexp
