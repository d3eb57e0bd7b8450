/* SANDBOX: what the guest as a whole needs before containers come: names
 * for its NIC slots and the host's shared filesystem. POWEROFF's clean-up. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <time.h>
#include <unistd.h>

/* linux/random.h: musl ships no kernel headers. */
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#define RNDRESEEDCRNG _IO('R', 0x07)

#include "init.h"
#include "util.h"

static int setup_done;

/* The guest has no RNG device: the host's random bytes seed it, credited as
 * entropy, and the kernel reseeds from them at once. */
static void credit_entropy(const char *b64)
{
	size_t len;
	unsigned char *bytes = base64_decode(b64, &len);
	if (!bytes || !len || len > 512) {
		free(bytes);
		return;
	}
	struct {
		int entropy_count;
		int buf_size;
		unsigned char buf[512];
	} pool;
	pool.entropy_count = (int)len * 8;
	pool.buf_size = (int)len;
	memcpy(pool.buf, bytes, len);
	free(bytes);
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (ioctl(fd, RNDADDENTROPY, &pool) || ioctl(fd, RNDRESEEDCRNG))
		LOG("cannot seed the RNG: %s", strerror(errno));
	close(fd);
	memset(&pool, 0, sizeof(pool));
}

/* The host's wall clock. A guest cloned from a template wakes with the
 * template's clock, stale by however long ago that was saved (and a cold
 * boot's RTC has whole seconds only): the host's time, read a moment before
 * it sent this, is the best there is. */
static void set_clock(const struct json *spec)
{
	long long ns = json_int(spec, "time_ns", 0);
	if (ns <= 0)
		return;
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000LL),
			      .tv_nsec = (long)(ns % 1000000000LL)};
	if (clock_settime(CLOCK_REALTIME, &ts))
		LOG("cannot set the clock: %s", strerror(errno));
}

int sandbox_ready(void)
{
	return setup_done > (template_mode ? 1 : 0);
}

int sandbox_setup(const struct json *spec, struct err *e)
{
	/* A template takes a SANDBOX before it is saved (its NIC slots' names:
	 * the same for every clone, renaming costs a clone tens of ms under TCG)
	 * and each clone's own after it is restored. */
	if (setup_done > (template_mode ? 1 : 0)) {
		set_err(e, "state", EBUSY, "the sandbox is already set up");
		return -1;
	}
	set_clock(spec);
	credit_entropy(json_str(spec, "entropy", ""));
	const struct json *scan = json_get(spec, "scan");
	for (const struct json *t = scan ? scan->child : NULL; t; t = t->next)
		if (t->type == J_NUM && t->num >= 1 && t->num <= 16383)
			scsi_scan_lun((int)t->num);
	if (net_name_nics(json_get(spec, "nics"), e))
		return -1;
	const char *tag = json_str(spec, "shared_fs", "");
	if (*tag) {
		if (!valid_id(tag)) {
			set_err(e, "invalid", EINVAL, "bad shared filesystem tag");
			return -1;
		}
		if (mkdir_p(SHARED, 0755) || mount(tag, SHARED, "virtiofs", 0, "")) {
			set_err(e, "system", errno, "mount shared filesystem %s: %s", tag,
				strerror(errno));
			return -1;
		}
		TRACE("shared filesystem mounted");
	}
	setup_done++;
	return 0;
}

void sandbox_shutdown(void)
{
	/* Detach every container tree, then the disks, so their filesystems
	 * are cleanly unmounted (not just synced) before power-off. */
	containers_unmount_all();
	umount2(SHARED, MNT_DETACH);
	sync();
}
