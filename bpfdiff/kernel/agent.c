/*
 * bpfdiff guest agent: runs as the guest's program under /init, talks to the
 * host over virtio-serial (or a raw serial port) in length-prefixed binary
 * frames, and executes whole scenarios with raw bpf(2) calls.
 *
 * Built static by `bpfdiff kernel setup` (gcc -static -O2).  The wire format
 * is described in bpfdiff/kernel/protocol.py; both sides must change together.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define CMD_HELLO 0x48    /* 'H' agent -> host */
#define CMD_SCENARIO 0x53 /* 'S' */
#define CMD_PING 0x50     /* 'P' */
#define CMD_READ 0x52     /* 'R': a file's contents (compare-jit reads /proc/kallsyms) */
#define CMD_STATS 0x54    /* 'T': time spent per syscall kind since the last 'T' (bench/kernel_throughput.py) */
#define CMD_DEBUG 0x44    /* 'D' + 'c': crash the kernel (sysrq c), 'h': stop answering -- tests of the host's recovery */
#define CMD_CLOSED 0x43   /* 'C' agent -> host: the fds of the scenario answered last are closed */

#define EV_LOAD 1
#define EV_UPDATE 2
#define EV_DELETE 3
#define EV_RUN 4
#define EV_INFO 5
#define EV_FIXED 6

#define FLAG_JIT 1
#define FLAG_IMAGES_ON_LOAD 2
#define FLAG_CONTINUE 4 /* keep going after a refused load (compare-jit) */
#define FLAG_PANIC_CLOSING 0x80 /* tests of the host's recovery: crash the kernel after the reply, before closing */
static uint8_t scenario_flags;

#define MAX_MAPS 64
#define MAX_PROGS 64
#define LOG_SIZE (4u << 20)
#define LOG_TAIL 4096
#define OUT_SIZE (64u << 10)

static int chan = -1;
static char *logbuf;
static unsigned char outdata[OUT_SIZE];
static int jit_state = -1;

/* ---- growable output buffer: the frame being built, after room for its u32 length ---- */
static unsigned char *rbuf;
static size_t rlen = 4, rcap;

static void rput(const void *p, size_t n)
{
	if (rlen + n > rcap) {
		while (rlen + n > rcap)
			rcap = rcap ? rcap * 2 : 1 << 16;
		rbuf = realloc(rbuf, rcap);
		if (!rbuf)
			abort();
	}
	memcpy(rbuf + rlen, p, n);
	rlen += n;
}
static void rput8(uint8_t v) { rput(&v, 1); }
static void rput32(uint32_t v) { rput(&v, 4); }

/* ---- channel ---- */
/* What the host sent, read in pieces as large as the channel gives (a frame's length and its
 * payload, often the next request too, come in one piece): one read(2) per piece, not two per
 * frame.  Under TCG every syscall and every virtqueue refill costs tens of microseconds. */
static unsigned char inbuf[1 << 16];
static size_t in_len, in_pos;

static int read_full(void *p, size_t n)
{
	unsigned char *c = p;
	while (n) {
		if (in_pos < in_len) {
			size_t k = in_len - in_pos < n ? in_len - in_pos : n;
			memcpy(c, inbuf + in_pos, k);
			in_pos += k;
			c += k;
			n -= k;
			continue;
		}
		/* a large remainder goes straight to its place */
		int direct = n >= sizeof(inbuf);
		ssize_t r = read(chan, direct ? c : inbuf, direct ? n : sizeof(inbuf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		if (direct) {
			c += r;
			n -= r;
		} else {
			in_pos = 0;
			in_len = r;
		}
	}
	return 0;
}

static void write_full(const void *p, size_t n)
{
	const unsigned char *c = p;
	while (n) {
		ssize_t r = write(chan, c, n);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r <= 0)
			exit(3);
		c += r;
		n -= r;
	}
}

/* The frame in one write(2): its length goes in the room left for it at the start of rbuf
 * (every reply has at least its command byte, so rbuf exists) */
static void send_reply(void)
{
	uint32_t n = rlen - 4;
	memcpy(rbuf, &n, 4);
	write_full(rbuf, rlen);
	rlen = 4;
}

/* ---- request parsing ---- */
static unsigned char *req;
static size_t req_len, req_pos;
static int req_bad;

static void *take(size_t n)
{
	if (req_pos + n > req_len) {
		req_bad = 1;
		return NULL;
	}
	void *p = req + req_pos;
	req_pos += n;
	return p;
}
static uint32_t take32(void)
{
	uint32_t v = 0;
	void *p = take(4);
	if (p)
		memcpy(&v, p, 4);
	return v;
}
static uint8_t take8(void)
{
	uint8_t *p = take(1);
	return p ? *p : 0;
}

/* ---- time per syscall kind: slot = bpf command, or one of these ---- */
#define STAT_PA_UPDATE 40 /* BPF_MAP_UPDATE_ELEM / DELETE_ELEM on a prog array (text poking) */
#define STAT_PA_DELETE 41
#define STAT_CLOSE_PROG 42
#define STAT_CLOSE_MAP 43
#define STAT_SCENARIO 44 /* a whole scenario request, parsing included */
#define STAT_IDLE 45     /* waiting for the next request (deferred frees run then) */
#define NSTATS 46
static uint64_t stat_n[NSTATS], stat_ns[NSTATS];
static int stat_slot = -1; /* overrides the bpf command's slot for the next sys_bpf */

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void account(int slot, uint64_t since)
{
	if (slot >= 0 && slot < NSTATS) {
		stat_n[slot]++;
		stat_ns[slot] += now_ns() - since;
	}
}

/* ---- bpf(2) ---- */
static long sys_bpf(int cmd, union bpf_attr *attr)
{
	uint64_t t = now_ns();
	long r = syscall(__NR_bpf, cmd, attr, sizeof(*attr));
	int err = errno;
	account(stat_slot >= 0 ? stat_slot : cmd, t);
	stat_slot = -1;
	errno = err;
	return r;
}

static void timed_close(int fd, int slot)
{
	uint64_t t = now_ns();
	close(fd);
	account(slot, t);
}

static void write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	if (fd >= 0) {
		if (write(fd, value, strlen(value)) < 0)
			perror(path);
		close(fd);
	}
}

static void set_jit(int on)
{
	if (jit_state == on)
		return;
	write_file("/proc/sys/net/core/bpf_jit_enable", on ? "1" : "0");
	jit_state = on;
}

/* ---- scenario state ---- */
struct map {
	int fd;
	uint32_t type, key_size, value_size, max_entries;
};
struct prog {
	int fd;
	uint32_t id;
	struct bpf_insn *insns;
	uint32_t ninsns;
	uint32_t nrelocs;
	uint32_t *relocs; /* pairs (insn index, map index) */
	void *btf;
	uint32_t btf_len;
	uint32_t nfuncs;
	uint32_t *funcs; /* func start insn offsets */
};
static struct map maps[MAX_MAPS];
static struct prog progs[MAX_PROGS];
static uint32_t nmaps, nprogs;

static void reset(void)
{
	for (uint32_t i = 0; i < nprogs; i++) {
		if (progs[i].fd >= 0)
			timed_close(progs[i].fd, STAT_CLOSE_PROG);
		progs[i].fd = -1;
	}
	for (uint32_t i = 0; i < nmaps; i++) {
		if (maps[i].fd >= 0)
			timed_close(maps[i].fd, STAT_CLOSE_MAP);
		maps[i].fd = -1;
	}
	nmaps = nprogs = 0;
}

static int prog_fd(uint32_t idx)
{
	return idx < nprogs ? progs[idx].fd : -1;
}

/* BPF_OBJ_GET_INFO_BY_FD into *info, whose requested lengths and buffers the caller set */
static int get_prog_info(int fd, struct bpf_prog_info *info)
{
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.info.bpf_fd = fd;
	attr.info.info_len = sizeof(*info);
	attr.info.info = (uint64_t)(unsigned long)info;
	return sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr);
}

/* xlated + jited images, ksyms and func lens of a loaded program */
static void put_images(int fd)
{
	struct bpf_prog_info info;
	memset(&info, 0, sizeof(info));
	if (fd < 0 || get_prog_info(fd, &info)) {
		rput32(0);
		rput32(0);
		rput32(0);
		rput32(0);
		return;
	}
	uint32_t xl = info.xlated_prog_len, jl = info.jited_prog_len;
	uint32_t nk = info.nr_jited_ksyms, nf = info.nr_jited_func_lens;
	unsigned char *x = calloc(1, xl + 1), *j = calloc(1, jl + 1);
	uint64_t *k = calloc(nk + 1, 8);
	uint32_t *f = calloc(nf + 1, 4);
	memset(&info, 0, sizeof(info));
	info.xlated_prog_len = xl;
	info.xlated_prog_insns = (uint64_t)(unsigned long)x;
	info.jited_prog_len = jl;
	info.jited_prog_insns = (uint64_t)(unsigned long)j;
	info.nr_jited_ksyms = nk;
	info.jited_ksyms = (uint64_t)(unsigned long)k;
	info.nr_jited_func_lens = nf;
	info.jited_func_lens = (uint64_t)(unsigned long)f;
	if (get_prog_info(fd, &info))
		xl = jl = nk = nf = 0;
	rput32(xl);
	rput(x, xl);
	rput32(jl);
	rput(j, jl);
	rput32(nk);
	rput(k, (size_t)nk * 8);
	rput32(nf);
	rput(f, (size_t)nf * 4);
	free(x);
	free(j);
	free(k);
	free(f);
}

static uint32_t prog_id(int fd)
{
	struct bpf_prog_info info;
	memset(&info, 0, sizeof(info));
	return get_prog_info(fd, &info) ? 0 : info.id;
}

/* BTF objects by content, kept for the agent's life: programs whose BTF is the same blob (ours
 * depends only on the number of functions) share one BTF object, as the programs of one
 * object file share its BTF under libbpf.  A program holds a reference to its BTF; what the
 * verifier checks and what the JIT emits depend on the types, not on which object holds them.
 * Saves a BTF_LOAD (and the BTF's later free) per program with subprograms. */
#define BTF_CACHE 32
static struct {
	void *blob;
	uint32_t len;
	int fd;
} btf_cache[BTF_CACHE];
static uint32_t nbtf_cache;

/* A BTF fd for the program's blob (-1 and errno on failure); *owned: the caller closes it */
static int load_btf(struct prog *p, int *owned)
{
	*owned = 0;
	for (uint32_t i = 0; i < nbtf_cache; i++)
		if (btf_cache[i].len == p->btf_len && memcmp(btf_cache[i].blob, p->btf, p->btf_len) == 0)
			return btf_cache[i].fd;
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.btf = (uint64_t)(unsigned long)p->btf;
	attr.btf_size = p->btf_len;
	int fd = sys_bpf(BPF_BTF_LOAD, &attr);
	void *blob = fd >= 0 && nbtf_cache < BTF_CACHE ? malloc(p->btf_len) : NULL;
	if (blob) {
		memcpy(blob, p->btf, p->btf_len);
		btf_cache[nbtf_cache].blob = blob;
		btf_cache[nbtf_cache].len = p->btf_len;
		btf_cache[nbtf_cache].fd = fd;
		nbtf_cache++;
	} else {
		*owned = fd >= 0;
	}
	return fd;
}

/* Returns 0 or -errno; on failure the verifier's log tail goes to the reply. */
static int load_prog(uint32_t idx, int images)
{
	struct prog *p = &progs[idx];
	char name[16];
	union bpf_attr attr;
	int btf_fd = -1, btf_owned = 0, fd = -1, err = 0, attempt;

	if (p->fd >= 0) {
		rput32(0);
		if (images)
			put_images(p->fd);
		return 0;
	}
	for (uint32_t r = 0; r < p->nrelocs; r++) {
		uint32_t at = p->relocs[2 * r], m = p->relocs[2 * r + 1];
		if (at < p->ninsns && m < nmaps)
			p->insns[at].imm = maps[m].fd;
	}
	struct bpf_func_info *fi = NULL;
	if (p->btf_len) {
		btf_fd = load_btf(p, &btf_owned);
		if (btf_fd < 0) {
			err = -errno;
			rput32((uint32_t)err);
			const char *msg = "BTF_LOAD of the program's function info failed";
			rput32(strlen(msg));
			rput(msg, strlen(msg));
			return err;
		}
		fi = calloc(p->nfuncs ? p->nfuncs : 1, sizeof(*fi));
		for (uint32_t i = 0; i < p->nfuncs; i++) {
			fi[i].insn_off = p->funcs[i];
			fi[i].type_id = 3 + i;
		}
	}
	snprintf(name, sizeof(name), "p%u", idx);
	/* Without a log first (fast); on refusal again with log_level 1 for the message. */
	for (attempt = 0; attempt < 2; attempt++) {
		memset(&attr, 0, sizeof(attr));
		attr.prog_type = BPF_PROG_TYPE_XDP;
		attr.insn_cnt = p->ninsns;
		attr.insns = (uint64_t)(unsigned long)p->insns;
		attr.license = (uint64_t)(unsigned long)"GPL";
		memcpy(attr.prog_name, name, sizeof(name));
		if (attempt) {
			logbuf[0] = 0;
			attr.log_level = 1;
			attr.log_size = LOG_SIZE;
			attr.log_buf = (uint64_t)(unsigned long)logbuf;
		}
		if (btf_fd >= 0) {
			attr.prog_btf_fd = btf_fd;
			attr.func_info_rec_size = sizeof(*fi);
			attr.func_info = (uint64_t)(unsigned long)fi;
			attr.func_info_cnt = p->nfuncs;
		}
		fd = sys_bpf(BPF_PROG_LOAD, &attr);
		if (fd >= 0)
			break;
		err = -errno;
	}
	if (btf_owned)
		close(btf_fd);
	free(fi);
	if (fd < 0) {
		rput32((uint32_t)err);
		size_t n = strnlen(logbuf, LOG_SIZE);
		const char *tail = logbuf;
		if (attempt == 2 && n > LOG_TAIL) {
			tail = logbuf + n - LOG_TAIL;
			n = LOG_TAIL;
		}
		if (attempt != 2)
			n = 0;
		rput32(n);
		rput(tail, n);
		return err;
	}
	p->fd = fd;
	p->id = 0; /* looked up when a prog-array read-back needs it (put_maps) */
	rput32(0);
	if (images)
		put_images(fd);
	return 0;
}

static int32_t map_update(uint32_t m, const void *key, const void *value, uint32_t flags)
{
	union bpf_attr attr;
	if (m >= nmaps)
		return -EINVAL;
	memset(&attr, 0, sizeof(attr));
	attr.map_fd = maps[m].fd;
	attr.key = (uint64_t)(unsigned long)key;
	attr.value = (uint64_t)(unsigned long)value;
	attr.flags = flags;
	if (maps[m].type == BPF_MAP_TYPE_PROG_ARRAY)
		stat_slot = STAT_PA_UPDATE;
	return sys_bpf(BPF_MAP_UPDATE_ELEM, &attr) ? -errno : 0;
}

static int32_t map_delete(uint32_t m, const void *key)
{
	union bpf_attr attr;
	if (m >= nmaps)
		return -EINVAL;
	memset(&attr, 0, sizeof(attr));
	attr.map_fd = maps[m].fd;
	attr.key = (uint64_t)(unsigned long)key;
	if (maps[m].type == BPF_MAP_TYPE_PROG_ARRAY)
		stat_slot = STAT_PA_DELETE;
	return sys_bpf(BPF_MAP_DELETE_ELEM, &attr) ? -errno : 0;
}

static int map_lookup(struct map *mp, const void *key, void *value)
{
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.map_fd = mp->fd;
	attr.key = (uint64_t)(unsigned long)key;
	attr.value = (uint64_t)(unsigned long)value;
	return sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr);
}

/* An array's whole contents with one BPF_MAP_LOOKUP_BATCH (the kernel copies element after
 * element as a lookup of each would, kernel/bpf/syscall.c generic_map_lookup_batch): keys
 * 0..max_entries-1 in order.  0 when the kernel has no batch for it (before 5.6: per key). */
static int put_array_batch(struct map *mp)
{
	static unsigned char *buf;
	static size_t cap;
	static int unsupported;
	size_t need = (size_t)mp->max_entries * (4 + mp->value_size);
	if (unsupported || need > (1u << 22))
		return 0;
	if (need > cap) {
		free(buf);
		cap = need;
		buf = malloc(cap);
	}
	uint32_t out_batch = 0;
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.batch.map_fd = mp->fd;
	attr.batch.out_batch = (uint64_t)(unsigned long)&out_batch;
	attr.batch.keys = (uint64_t)(unsigned long)buf;
	attr.batch.values = (uint64_t)(unsigned long)(buf + (size_t)mp->max_entries * 4);
	attr.batch.count = mp->max_entries;
	if (sys_bpf(BPF_MAP_LOOKUP_BATCH, &attr) && errno != ENOENT) {
		if (errno == EINVAL || errno == ENOTSUP || errno == 524 /* ENOTSUPP */)
			unsupported = 1;
		return 0;
	}
	if (attr.batch.count != mp->max_entries)
		return 0;
	rput32(attr.batch.count);
	for (uint32_t k = 0; k < attr.batch.count; k++) {
		rput(buf + (size_t)k * 4, 4);
		rput(buf + (size_t)mp->max_entries * 4 + (size_t)k * mp->value_size, mp->value_size);
	}
	return 1;
}

/* Every map's present elements: u32 count, then (key, value-or-program-index) pairs. */
static void put_maps(void)
{
	static unsigned char key[512], next[512], value[65536];
	for (uint32_t i = 0; i < nmaps; i++) {
		struct map *mp = &maps[i];
		if (mp->type == BPF_MAP_TYPE_ARRAY && put_array_batch(mp))
			continue;
		size_t count_at = rlen;
		uint32_t count = 0;
		rput32(0);
		int is_prog = mp->type == BPF_MAP_TYPE_PROG_ARRAY;
		if (mp->type == BPF_MAP_TYPE_ARRAY || is_prog) {
			for (uint32_t k = 0; k < mp->max_entries; k++) {
				if (map_lookup(mp, &k, value))
					continue;
				rput(&k, 4);
				if (is_prog) {
					uint32_t id, who = 0xffffffff;
					memcpy(&id, value, 4);
					for (uint32_t p = 0; p < nprogs; p++) {
						if (progs[p].fd >= 0 && !progs[p].id)
							progs[p].id = prog_id(progs[p].fd);
						if (progs[p].fd >= 0 && progs[p].id == id)
							who = p;
					}
					rput32(who);
				} else {
					rput(value, mp->value_size);
				}
				count++;
			}
		} else {
			union bpf_attr attr;
			void *prev = NULL;
			for (;;) {
				memset(&attr, 0, sizeof(attr));
				attr.map_fd = mp->fd;
				attr.key = (uint64_t)(unsigned long)prev;
				attr.next_key = (uint64_t)(unsigned long)next;
				if (sys_bpf(BPF_MAP_GET_NEXT_KEY, &attr))
					break;
				memcpy(key, next, mp->key_size);
				prev = key;
				if (map_lookup(mp, key, value))
					continue;
				rput(key, mp->key_size);
				rput(value, mp->value_size);
				count++;
			}
		}
		memcpy(rbuf + count_at, &count, 4);
	}
}

static void run_prog(uint32_t idx, const void *data, uint32_t len)
{
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.test.prog_fd = prog_fd(idx);
	attr.test.data_in = (uint64_t)(unsigned long)data;
	attr.test.data_size_in = len;
	attr.test.data_out = (uint64_t)(unsigned long)outdata;
	attr.test.data_size_out = OUT_SIZE;
	attr.test.repeat = 1;
	int32_t err = sys_bpf(BPF_PROG_TEST_RUN, &attr) ? -errno : 0;
	rput32((uint32_t)err);
	rput32(attr.test.retval);
	uint32_t out = err ? 0 : attr.test.data_size_out;
	if (out > OUT_SIZE)
		out = OUT_SIZE;
	rput32(out);
	rput(outdata, out);
	put_maps();
}

static void scenario(void)
{
	uint8_t flags = take8();
	scenario_flags = flags;
	set_jit(flags & FLAG_JIT);
	nmaps = take32();
	if (nmaps > MAX_MAPS)
		req_bad = 1;
	for (uint32_t i = 0; i < nmaps && !req_bad; i++) {
		maps[i].type = take32();
		maps[i].key_size = take32();
		maps[i].value_size = take32();
		maps[i].max_entries = take32();
		maps[i].fd = -1;
	}
	uint32_t np = take32();
	if (np > MAX_PROGS)
		req_bad = 1;
	for (uint32_t i = 0; i < np && !req_bad; i++) {
		struct prog *p = &progs[i];
		memset(p, 0, sizeof(*p));
		p->fd = -1;
		p->ninsns = take32();
		void *insns = take((size_t)p->ninsns * 8);
		p->insns = malloc((size_t)p->ninsns * 8 + 8);
		if (insns)
			memcpy(p->insns, insns, (size_t)p->ninsns * 8);
		p->nrelocs = take32();
		p->relocs = take((size_t)p->nrelocs * 8);
		p->btf_len = take32();
		p->btf = take(p->btf_len);
		p->nfuncs = take32();
		p->funcs = take((size_t)p->nfuncs * 4);
		nprogs = i + 1;
	}
	if (req_bad) {
		rput8(2);
		rput32((uint32_t)-EPROTO);
		goto out;
	}
	/* maps */
	for (uint32_t i = 0; i < nmaps; i++) {
		union bpf_attr attr;
		memset(&attr, 0, sizeof(attr));
		attr.map_type = maps[i].type;
		attr.key_size = maps[i].key_size;
		attr.value_size = maps[i].value_size;
		attr.max_entries = maps[i].max_entries;
		maps[i].fd = sys_bpf(BPF_MAP_CREATE, &attr);
		if (maps[i].fd < 0) {
			rput8(2);
			rput32((uint32_t)-errno);
			rput32(i);
			goto out;
		}
	}
	rput8(0);
	uint32_t nev = take32();
	for (uint32_t e = 0; e < nev && !req_bad; e++) {
		uint8_t type = take8();
		rput8(type);
		if (type == EV_LOAD) {
			uint32_t idx = take32();
			if (idx >= nprogs) {
				req_bad = 1;
				break;
			}
			if (load_prog(idx, flags & FLAG_IMAGES_ON_LOAD) && !(flags & FLAG_CONTINUE))
				break; /* the engine stops at the first refusal */
		} else if (type == EV_UPDATE) {
			uint32_t m = take32(), fl = take32(), kl = take32();
			void *key = take(kl);
			uint8_t kind = take8();
			int32_t fd;
			void *value;
			if (kind == 1) {
				fd = prog_fd(take32());
				value = &fd;
			} else {
				uint32_t vl = take32();
				value = take(vl);
			}
			if (req_bad)
				break;
			rput32((uint32_t)map_update(m, key, value, fl));
		} else if (type == EV_DELETE) {
			uint32_t m = take32(), kl = take32();
			void *key = take(kl);
			if (req_bad)
				break;
			rput32((uint32_t)map_delete(m, key));
		} else if (type == EV_RUN) {
			uint32_t idx = take32(), len = take32();
			void *data = take(len);
			if (req_bad)
				break;
			run_prog(idx, data, len);
		} else if (type == EV_INFO) {
			put_images(prog_fd(take32()));
		} else if (type == EV_FIXED) {
			rput32(take32());
		} else {
			req_bad = 1;
		}
	}
	if (req_bad) {
		rput8(0xff); /* malformed request: the host's bug, not the kernel's */
	}
out:;
}

/* After the scenario's reply has gone out: close its fds while the host reads the reply, then
 * say so (CMD_CLOSED), so that the host can tell a death while closing them from one while
 * serving the next request. */
static void close_scenario(void)
{
	if (scenario_flags & FLAG_PANIC_CLOSING)
		write_file("/proc/sysrq-trigger", "c");
	for (uint32_t i = 0; i < nprogs; i++)
		free(progs[i].insns);
	reset();
	rput8(CMD_CLOSED);
	send_reply();
}

/* CMD_STATS: u32 n, then n x (u64 calls, u64 ns) per slot; the counters restart */
static void stats_cmd(void)
{
	rput32(NSTATS);
	for (int i = 0; i < NSTATS; i++) {
		rput(&stat_n[i], 8);
		rput(&stat_ns[i], 8);
	}
	memset(stat_n, 0, sizeof(stat_n));
	memset(stat_ns, 0, sizeof(stat_ns));
}

/* CMD_DEBUG: never part of a scenario; the host's tests use it to see a guest die for real */
static void debug_cmd(void)
{
	uint8_t what = take8();
	if (what == 'c')
		write_file("/proc/sysrq-trigger", "c"); /* a NULL dereference in the kernel: oops=panic */
	if (what == 'h' || what == 'c')
		for (;;)
			pause();
}

/* CMD_READ: the rest of the request is a path; reply u32 errno (0 on success), then the bytes */
static void read_file_cmd(void)
{
	char path[256];
	size_t n = req_len - req_pos < sizeof(path) - 1 ? req_len - req_pos : sizeof(path) - 1;
	memcpy(path, req + req_pos, n);
	path[n] = 0;
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		rput32((uint32_t)errno);
		return;
	}
	rput32(0);
	char buf[1 << 16];
	ssize_t got;
	while ((got = read(fd, buf, sizeof(buf))) > 0)
		rput(buf, (size_t)got);
	close(fd);
}

static int open_channel(uint8_t *kind)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *de;
	char path[300], name[64];
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", de->d_name);
		int fd = open(path, O_RDONLY);
		if (fd < 0)
			continue;
		ssize_t n = read(fd, name, sizeof(name) - 1);
		close(fd);
		if (n > 0 && strncmp(name, "bpfdiff", 7) == 0) {
			snprintf(path, sizeof(path), "/dev/%s", de->d_name);
			closedir(d);
			*kind = 1;
			return open(path, O_RDWR);
		}
	}
	if (d)
		closedir(d);
	int fd = open("/dev/ttyS1", O_RDWR | O_NOCTTY);
	if (fd >= 0) {
		struct termios t;
		tcgetattr(fd, &t);
		cfmakeraw(&t);
		cfsetspeed(&t, B115200);
		tcsetattr(fd, TCSANOW, &t);
	}
	*kind = 2;
	return fd;
}

int main(void)
{
	uint8_t kind = 0;
	struct utsname u;

	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	write_file("/proc/sys/net/core/bpf_jit_harden", "0");
	write_file("/proc/sys/kernel/kptr_restrict", "0");
	logbuf = malloc(LOG_SIZE);
	chan = open_channel(&kind);
	if (chan < 0) {
		perror("bpfdiff-agent: no channel");
		return 1;
	}
	/* hello: bpf(2) works?, jit sysctl present?, channel kind, kernel release */
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	int bpf_ok = !(sys_bpf(BPF_PROG_LOAD, &attr) < 0 && errno == ENOSYS);
	int jit_ok = access("/proc/sys/net/core/bpf_jit_enable", F_OK) == 0;
	uname(&u);
	rput8(CMD_HELLO);
	rput8(bpf_ok);
	rput8(jit_ok);
	rput8(kind);
	rput(u.release, strlen(u.release));
	send_reply();
	fprintf(stderr, "bpfdiff-agent: ready (%s)\n", kind == 1 ? "virtio-serial" : "ttyS1");

	for (;;) {
		uint32_t n;
		uint64_t idle = now_ns();
		if (read_full(&n, 4))
			return 2;
		account(STAT_IDLE, idle);
		free(req);
		req = malloc(n ? n : 1);
		if (!req || read_full(req, n))
			return 2;
		req_len = n;
		req_pos = 0;
		req_bad = 0;
		uint8_t cmd = take8();
		rput8(cmd);
		if (cmd == CMD_SCENARIO) {
			uint64_t t = now_ns();
			scenario();
			account(STAT_SCENARIO, t);
		}
		else if (cmd == CMD_PING)
			;
		else if (cmd == CMD_READ)
			read_file_cmd();
		else if (cmd == CMD_STATS)
			stats_cmd();
		else if (cmd == CMD_DEBUG)
			debug_cmd();
		else
			rput8(0xff);
		send_reply();
		if (cmd == CMD_SCENARIO)
			close_scenario();
	}
}
