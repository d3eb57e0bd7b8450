#include "json.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 32

struct arena {
	struct arena *prev;
	size_t used, cap;
	char mem[];
};

struct parser {
	const char *p, *end;
	struct arena *arena;
	int depth;
};

/* All nodes and strings of one document live in a chain of arenas hanging
 * off the root node, so one free releases everything. */
struct root {
	struct json node;
	struct arena *arena;
};

static void *palloc(struct parser *ps, size_t size)
{
	size = (size + 15) & ~(size_t)15;
	struct arena *a = ps->arena;
	if (!a || a->used + size > a->cap) {
		size_t cap = size > 16384 ? size : 16384;
		struct arena *n = malloc(sizeof(*n) + cap);
		if (!n)
			return NULL;
		n->prev = a;
		n->used = 0;
		n->cap = cap;
		ps->arena = a = n;
	}
	void *out = a->mem + a->used;
	a->used += size;
	memset(out, 0, size);
	return out;
}

static void skip_ws(struct parser *ps)
{
	while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int read_hex4(struct parser *ps, unsigned *out)
{
	if (ps->end - ps->p < 4)
		return -1;
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		int h = hexval(ps->p[i]);
		if (h < 0)
			return -1;
		v = v << 4 | (unsigned)h;
	}
	ps->p += 4;
	*out = v;
	return 0;
}

static size_t utf8_put(char *o, unsigned cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | cp >> 6);
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | cp >> 12);
		o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | cp >> 18);
	o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
	o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

static char *parse_string(struct parser *ps, size_t *len)
{
	if (ps->p >= ps->end || *ps->p != '"')
		return NULL;
	ps->p++;
	const char *start = ps->p;
	/* Escapes only ever shrink, so the raw span bounds the output. */
	while (ps->p < ps->end && *ps->p != '"') {
		if (*ps->p == '\\')
			ps->p++;
		ps->p++;
	}
	if (ps->p >= ps->end)
		return NULL;
	size_t raw = (size_t)(ps->p - start);
	char *out = palloc(ps, raw + 1);
	if (!out)
		return NULL;
	size_t n = 0;
	ps->p = start;
	while (ps->p < start + raw) {
		char c = *ps->p++;
		if ((unsigned char)c < 0x20)
			return NULL;
		if (c != '\\') {
			out[n++] = c;
			continue;
		}
		c = *ps->p++;
		switch (c) {
		case '"': out[n++] = '"'; break;
		case '\\': out[n++] = '\\'; break;
		case '/': out[n++] = '/'; break;
		case 'b': out[n++] = '\b'; break;
		case 'f': out[n++] = '\f'; break;
		case 'n': out[n++] = '\n'; break;
		case 'r': out[n++] = '\r'; break;
		case 't': out[n++] = '\t'; break;
		case 'u': {
			unsigned cp;
			if (read_hex4(ps, &cp))
				return NULL;
			if (cp >= 0xd800 && cp < 0xdc00 && ps->p + 6 <= start + raw && ps->p[0] == '\\' &&
			    ps->p[1] == 'u') {
				unsigned lo;
				ps->p += 2;
				if (read_hex4(ps, &lo) || lo < 0xdc00 || lo >= 0xe000)
					return NULL;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			}
			if (cp == 0)
				return NULL; /* strings are C strings here */
			n += utf8_put(out + n, cp);
			break;
		}
		default:
			return NULL;
		}
	}
	out[n] = 0;
	ps->p = start + raw + 1;
	*len = n;
	return out;
}

static struct json *parse_value(struct parser *ps);

static struct json *parse_container(struct parser *ps, int object)
{
	struct json *node = palloc(ps, sizeof(*node));
	if (!node || ++ps->depth > MAX_DEPTH)
		return NULL;
	node->type = object ? J_OBJ : J_ARR;
	ps->p++;
	struct json **tail = &node->child;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) {
		ps->p++;
		ps->depth--;
		return node;
	}
	for (;;) {
		char *key = NULL;
		size_t klen;
		skip_ws(ps);
		if (object) {
			key = parse_string(ps, &klen);
			if (!key)
				return NULL;
			skip_ws(ps);
			if (ps->p >= ps->end || *ps->p != ':')
				return NULL;
			ps->p++;
		}
		struct json *v = parse_value(ps);
		if (!v)
			return NULL;
		v->key = key;
		*tail = v;
		tail = &v->next;
		node->len++;
		skip_ws(ps);
		if (ps->p >= ps->end)
			return NULL;
		if (*ps->p == ',') {
			ps->p++;
			continue;
		}
		if (*ps->p == (object ? '}' : ']')) {
			ps->p++;
			ps->depth--;
			return node;
		}
		return NULL;
	}
}

static int match(struct parser *ps, const char *word)
{
	size_t n = strlen(word);
	if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n))
		return 0;
	ps->p += n;
	return 1;
}

static struct json *parse_value(struct parser *ps)
{
	skip_ws(ps);
	if (ps->p >= ps->end)
		return NULL;
	char c = *ps->p;
	if (c == '{' || c == '[')
		return parse_container(ps, c == '{');
	struct json *node = palloc(ps, sizeof(*node));
	if (!node)
		return NULL;
	if (c == '"') {
		node->type = J_STR;
		node->str = parse_string(ps, &node->len);
		return node->str ? node : NULL;
	}
	if (match(ps, "true")) {
		node->type = J_BOOL;
		node->boolean = 1;
		return node;
	}
	if (match(ps, "false")) {
		node->type = J_BOOL;
		return node;
	}
	if (match(ps, "null")) {
		node->type = J_NULL;
		return node;
	}
	if (c == '-' || (c >= '0' && c <= '9')) {
		char tmp[64];
		size_t n = 0;
		while (ps->p < ps->end && n < sizeof(tmp) - 1 && *ps->p &&
		       strchr("+-0123456789.eE", *ps->p))
			tmp[n++] = *ps->p++;
		tmp[n] = 0;
		char *endp;
		node->type = J_NUM;
		node->num = strtod(tmp, &endp);
		return *endp ? NULL : node;
	}
	return NULL;
}

struct json *json_parse(const char *text, size_t len)
{
	struct parser ps = {.p = text, .end = text + len};
	struct root *root = calloc(1, sizeof(*root));
	if (!root)
		return NULL;
	struct json *v = parse_value(&ps);
	skip_ws(&ps);
	root->arena = ps.arena;
	if (!v || ps.p != ps.end) {
		json_free(&root->node);
		return NULL;
	}
	root->node = *v;
	return &root->node;
}

void json_free(struct json *node)
{
	if (!node)
		return;
	struct root *root = (struct root *)node;
	struct arena *a = root->arena;
	while (a) {
		struct arena *prev = a->prev;
		free(a);
		a = prev;
	}
	free(root);
}

const struct json *json_get(const struct json *obj, const char *key)
{
	if (!obj || obj->type != J_OBJ)
		return NULL;
	for (const struct json *m = obj->child; m; m = m->next)
		if (m->key && !strcmp(m->key, key))
			return m;
	return NULL;
}

const char *json_str(const struct json *obj, const char *key, const char *dflt)
{
	const struct json *v = json_get(obj, key);
	return v && v->type == J_STR ? v->str : dflt;
}

long long json_int(const struct json *obj, const char *key, long long dflt)
{
	const struct json *v = json_get(obj, key);
	if (!v || v->type != J_NUM || v->num != v->num)
		return dflt;
	/* Out of range (1e30, 1e999 read as infinity) is clamped: converting
	 * it as it is would be undefined behaviour. 0x1p63 is 2^63 exactly. */
	if (v->num >= 0x1p63)
		return LLONG_MAX;
	if (v->num < -0x1p63)
		return LLONG_MIN;
	return (long long)v->num;
}

int json_bool(const struct json *obj, const char *key, int dflt)
{
	const struct json *v = json_get(obj, key);
	return v && v->type == J_BOOL ? v->boolean : dflt;
}

void buf_add(struct buf *b, const void *data, size_t len)
{
	if (b->len + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + len + 1)
			cap *= 2;
		char *n = realloc(b->data, cap);
		if (!n)
			abort(); /* out of memory in PID 1: nothing sensible remains */
		b->data = n;
		b->cap = cap;
	}
	memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = 0;
}

void buf_str(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof(tmp)) {
		buf_add(b, tmp, (size_t)n);
		return;
	}
	char *big = malloc((size_t)n + 1);
	if (!big)
		abort();
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	buf_add(b, big, (size_t)n);
	free(big);
}

void buf_json_string(struct buf *b, const char *s)
{
	buf_add(b, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			char esc[2] = {'\\', (char)c};
			buf_add(b, esc, 2);
		} else if (c < 0x20) {
			buf_printf(b, "\\u%04x", c);
		} else {
			buf_add(b, s, 1);
		}
	}
	buf_add(b, "\"", 1);
}

void buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}
