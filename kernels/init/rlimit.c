/* Docker's --ulimit names: the RLIMIT_ resources runc knows, by name. */
#define _GNU_SOURCE
#include <strings.h>
#include <sys/resource.h>

#include "init.h"

static const struct {
	const char *name;
	int resource;
} resources[] = {
	{"cpu", RLIMIT_CPU},         {"fsize", RLIMIT_FSIZE},     {"data", RLIMIT_DATA},
	{"stack", RLIMIT_STACK},     {"core", RLIMIT_CORE},       {"rss", RLIMIT_RSS},
	{"nproc", RLIMIT_NPROC},     {"nofile", RLIMIT_NOFILE},   {"memlock", RLIMIT_MEMLOCK},
	{"as", RLIMIT_AS},           {"locks", RLIMIT_LOCKS},     {"sigpending", RLIMIT_SIGPENDING},
	{"msgqueue", RLIMIT_MSGQUEUE}, {"nice", RLIMIT_NICE},     {"rtprio", RLIMIT_RTPRIO},
	{"rttime", RLIMIT_RTTIME},
};

int rlimit_resource(const char *name)
{
	for (size_t i = 0; i < sizeof(resources) / sizeof(resources[0]); i++)
		if (!strcasecmp(resources[i].name, name))
			return resources[i].resource;
	return -1;
}
