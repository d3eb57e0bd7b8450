#include "util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void logf_(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (fd >= 0) {
		(void)!write(fd, "hbd-init: ", 10);
		(void)!write(fd, line, (size_t)n);
		close(fd);
	}
}

int trace_enabled;

void trace_(const char *fmt, ...)
{
	char line[512];
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	int n = snprintf(line, sizeof(line), "[%6.1f ms] ",
			 (double)ts.tv_sec * 1000 + (double)ts.tv_nsec / 1e6);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	logf_("%s", line);
}

int mkdir_p(const char *path, mode_t mode)
{
	char tmp[4096];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof(tmp))
		return -1;
	memcpy(tmp, path, len + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, mode) && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(tmp, mode) && errno != EEXIST)
		return -1;
	return 0;
}

int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int write_file(const char *path, const void *data, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		return -1;
	int rc = write_all(fd, data, len);
	close(fd);
	return rc;
}

ssize_t read_file(const char *path, char *out, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t n = 0;
	while (n + 1 < cap) {
		ssize_t r = read(fd, out + n, cap - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	out[n] = 0;
	return (ssize_t)n;
}

static int b64val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

unsigned char *base64_decode(const char *in, size_t *out_len)
{
	size_t len = strlen(in);
	unsigned char *out = malloc(len / 4 * 3 + 4);
	if (!out)
		return NULL;
	size_t n = 0;
	unsigned acc = 0;
	int bits = 0;
	for (size_t i = 0; i < len; i++) {
		if (in[i] == '=')
			break;
		int v = b64val(in[i]);
		if (v < 0) {
			free(out);
			return NULL;
		}
		acc = acc << 6 | (unsigned)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (unsigned char)(acc >> bits);
		}
	}
	*out_len = n;
	return out;
}

/* The serial of /sys/block/NAME: virtio-blk's `serial`, or a SCSI disk's
 * unit serial number (VPD page 0x80: 4 header bytes, then the serial). */
static int disk_serial(const char *name, char *out, size_t cap)
{
	char path[512];
	if (!strncmp(name, "vd", 2)) {
		snprintf(path, sizeof(path), "/sys/block/%s/serial", name);
		if (read_file(path, out, cap) < 0)
			return -1;
		out[strcspn(out, "\n")] = 0;
		return 0;
	}
	if (strncmp(name, "sd", 2))
		return -1;
	unsigned char page[256];
	snprintf(path, sizeof(path), "/sys/block/%s/device/vpd_pg80", name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, page, sizeof(page));
	close(fd);
	if (n < 4 || (size_t)page[3] + 4 > (size_t)n || page[3] >= cap)
		return -1;
	memcpy(out, page + 4, page[3]);
	out[page[3]] = 0;
	return 0;
}

static int find_disk_now(const char *serial, char *out, size_t cap)
{
	DIR *d = opendir("/sys/block");
	if (!d)
		return -1;
	struct dirent *e;
	int found = -1;
	while ((e = readdir(d))) {
		char value[128];
		if (disk_serial(e->d_name, value, sizeof(value)) || strcmp(value, serial))
			continue;
		snprintf(out, cap, "/dev/%s", e->d_name);
		found = 0;
		break;
	}
	closedir(d);
	return found;
}

/* The kernel never scans the SCSI bus (scsi_mod.scan=manual); the disks a
 * guest boots with are looked for one LUN at a time (target 0). Disks added
 * later arrive by hotplug events. */
int scsi_scan_lun(int lun)
{
	DIR *d = opendir("/sys/class/scsi_host");
	if (!d)
		return -1;
	struct dirent *e;
	int rc = -1;
	while ((e = readdir(d))) {
		if (strncmp(e->d_name, "host", 4))
			continue;
		char path[300], request[32];
		snprintf(path, sizeof(path), "/sys/class/scsi_host/%s/scan", e->d_name);
		int n = snprintf(request, sizeof(request), "0 0 %d", lun);
		int fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		rc = write_all(fd, request, (size_t)n);
		close(fd);
		break;
	}
	closedir(d);
	return rc;
}

int find_disk(const char *serial, char *out, size_t cap, int wait_ms)
{
	/* A disk hot-added on the SCSI bus shows up a moment after the host
	 * added it: the guest learns of it from an event on the bus. */
	long long deadline = monotonic_ms() + wait_ms;
	while (find_disk_now(serial, out, cap)) {
		if (monotonic_ms() >= deadline)
			return -1;
		struct timespec ts = {0, 2000000};
		nanosleep(&ts, NULL);
	}
	return 0;
}

long long monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *errno_text(int errnum)
{
	static char text[128];
	snprintf(text, sizeof(text), "%s", strerror(errnum));
	text[0] = (char)tolower((unsigned char)text[0]);
	return text;
}
