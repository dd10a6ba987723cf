// ldmc/files.h — the two rules every file the programs touch goes through:
//   regular_file_problem / check_regular_file: an input must be a regular file before anything opens,
//     reads or hashes it (a FIFO blocks open() and read(), /dev/zero never ends, a directory is no data).
//   FileChunk, file_write_atomic: an output is written whole or not at all: a temporary file beside it,
//     fsync, rename over the final name, fsync of the directory; on any failure the temporary file is
//     removed and the final name is untouched, so a killed or failed run never leaves half a file.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common.cuh"

// ----------------------------------------------------------------------------
// inputs

// what a file that is not a regular one is, for the refusal ("a FIFO (named pipe)", ...)
static inline const char* file_kind(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

// NULL when `path` names a regular file (symlinks followed); otherwise what it is instead.
// Only stat(): nothing is opened, so a FIFO or a device cannot block or feed endless bytes.
static inline const char* regular_file_problem(const char* path) {
    static char problem[64];
    struct stat sb;
    if (stat(path, &sb) != 0) return strerror(errno);
    if (S_ISREG(sb.st_mode)) return NULL;
    snprintf(problem, sizeof(problem), "%s, not a regular file", file_kind(sb.st_mode));
    return problem;
}

// exits with one clear message unless `path` is a regular file; `what` names it for the user
// ("VAE checkpoint", "--init-noise file")
static inline void check_regular_file(const char* path, const char* what) {
    const char* problem = regular_file_problem(path);
    if (problem != NULL) {
        fprintf(stderr, "Error: %s '%s': %s\nHINT: check the path; it must name a regular file (not a "
                        "directory, pipe or device).\n", what, path, problem);
        exit(EXIT_FAILURE);
    }
}

// ----------------------------------------------------------------------------
// outputs

typedef struct { const void* data; size_t size; } FileChunk;

// a failure before the rename: remove the temporary file and exit
static inline void file_write_fail(int fd, const char* tmp, const char* path, const char* step) {
    int saved = errno;
    if (fd >= 0) close(fd);
    unlink(tmp);
    fprintf(stderr, "Error: writing '%s' failed at %s: %s\nHINT: is the disk full, or the directory missing or "
                    "not writable? '%s' was left as it was.\n", path, step, strerror(saved), path);
    exit(EXIT_FAILURE);
}

// the directory entry made by rename() is only durable once the directory itself is synced
static inline void file_sync_dir(const char* path) {
    const char* slash = strrchr(path, '/');
    char dir[4096] = ".";
    if (slash != NULL) snprintf(dir, sizeof(dir), "%.*s", slash == path ? 1 : (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    // EINVAL: a file system that cannot sync directories (it has nothing more to make durable)
    int failed = fd < 0 || (fsync(fd) != 0 && errno != EINVAL);
    int saved = errno;
    if (fd >= 0) close(fd);
    if (failed) {
        fprintf(stderr, "Error: '%s' was written, but syncing its directory '%s' failed: %s\nHINT: the file may "
                        "not survive a crash; check the disk.\n", path, dir, strerror(saved));
        exit(EXIT_FAILURE);
    }
}

// writes the chunks, in order, as the file `path`, through "<path>.tmp"
static inline void file_write_atomic(const char* path, const FileChunk* chunks, int n) {
    char tmp[4096 + 8];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        fprintf(stderr, "Error: output path too long (%zu bytes): '%s'\n", strlen(path), path);
        exit(EXIT_FAILURE);
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) file_write_fail(fd, tmp, path, "creating the temporary file");
    for (int i = 0; i < n; i++) {
        const char* p = (const char*)chunks[i].data;
        for (size_t left = chunks[i].size; left > 0;) {   // write() may take less than asked
            ssize_t k = write(fd, p, left);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) file_write_fail(fd, tmp, path, "write");
            p += k;
            left -= (size_t)k;
        }
    }
    if (fsync(fd) != 0) file_write_fail(fd, tmp, path, "fsync");
    if (close(fd) != 0) file_write_fail(-1, tmp, path, "close");   // some file systems report write errors only here
    if (rename(tmp, path) != 0) file_write_fail(-1, tmp, path, "rename");
    file_sync_dir(path);
}
