/* Small helpers shared by the guest init's parts. */
#ifndef HBD_UTIL_H
#define HBD_UTIL_H

#include <stddef.h>
#include <sys/types.h>

/* Diagnostics go to the serial console (the host keeps it as console.log). */
void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define LOG(...) logf_(__VA_ARGS__)
/* Timings on the console when the kernel command line has hbd.trace. */
extern int trace_enabled;
void trace_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define TRACE(...) do { if (trace_enabled) trace_(__VA_ARGS__); } while (0)

int mkdir_p(const char *path, mode_t mode);
int write_file(const char *path, const void *data, size_t len, mode_t mode);
/* Read at most cap-1 bytes and NUL-terminate; returns length or -1. */
ssize_t read_file(const char *path, char *out, size_t cap);
int write_all(int fd, const void *data, size_t len);
/* Decode base64 in place-safe fashion into a new malloc'd buffer. */
unsigned char *base64_decode(const char *in, size_t *out_len);
/* The /dev node of the disk whose serial is `serial`, into out; waits up to
 * wait_ms for it to appear. */
int find_disk(const char *serial, char *out, size_t cap, int wait_ms);
/* Ask the SCSI bus for the disk at target 0, `lun`. */
int scsi_scan_lun(int lun);
long long monotonic_ms(void);
/* strerror as Go words it (runc's and dockerd's texts): "no such file or
 * directory". A static buffer: one use per message. */
const char *errno_text(int errnum);

#endif
