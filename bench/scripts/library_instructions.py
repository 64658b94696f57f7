"""Instructions Redis spends per task on the function library's hot path.

Runs `redis-server` under `valgrind --tool=callgrind`, loads a library
file, then creates, starts and completes N tasks in batches (64 unless BATCH
says otherwise) as the `queue` benchmark's consumer does, dumping the counts after each step.
Instruction counts do not depend on what else the machine runs, so two
versions of the library compare fairly on a busy machine (BENCHMARKS.md,
benchmark 1).

    pip install redis
    python3 bench/scripts/library_instructions.py shared/src/store/library.lua 2000

Environment: BATCH (tasks per call, default 64), PORT (default 7793), OUT
(a folder to keep callgrind's files in; default a new temp dir).
"""
import glob, os, re, subprocess, sys, tempfile, time

import redis
PORT=int(os.environ.get("PORT","7793"))
lib=sys.argv[1]; N=int(sys.argv[2]); B=int(os.environ.get("BATCH","64"))
out=os.path.join(os.environ.get("OUT") or tempfile.mkdtemp(prefix="callgrind-"), "redis")
for f in glob.glob(out+"*"): os.remove(f)
p=subprocess.Popen(["valgrind","--tool=callgrind",f"--callgrind-out-file={out}.%p","redis-server","--port",str(PORT),"--save","","--appendonly","no","--busy-reply-threshold","600000"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
r=redis.Redis(port=PORT, socket_timeout=600)
for _ in range(600):
    try: r.ping(); break
    except Exception: time.sleep(0.1)
# The library registers its functions under their names and its version
# (here "x"): savestream_create_batch_x and so on.
src=open(lib).read().replace("__LIBRARY_VERSION__","x")
r.function_load(src, replace=True)
pre="{bench}:"; K=lambda n: pre+n
r.xgroup_create(K("jobs"),"workers",id="0",mkstream=True)
def tid(i): return "c%019d"%i
shared=[K("events"),K("jobs"),K("queued"),K("running"),K("delayed")]
def dump(label):
    subprocess.run(["callgrind_control","-d",label,str(p.pid)],capture_output=True)
dump("setup")
for s in range(0,N,B):
    ids=range(s,min(N,s+B)); args=[]
    for i in ids:
        # As NewTask::create_args gives them (before 2026-11-28's format 2
        # of the `created` event, source, link, user, storage and dir came
        # as five arguments before the title as well).
        args+= [tid(i),f'["http","https://example.com/files/{i}.bin",123456789,"local1","/downloads"]',
                f"{i}.bin → local1:/downloads",""]
    r.fcall("savestream_create_batch_x", len(shared)+len(ids), *shared, *[K("task:"+tid(i)) for i in ids], *args)
dump("create")
leases=[]
while len(leases)<N:
    rep=r.xreadgroup("workers","w1",{K("jobs"):">"},count=B,block=100)
    ents=rep[0][1]; args=[];keys=[]
    for jid,f in ents:
        t=f[b"task"].decode(); keys.append(K("task:"+t)); args+=[t,jid.decode(),"w1"]
    # As Store::start_batch does: the task hashes read right behind the
    # call, for the items that do not carry their task's fields (an item a
    # create queued does, in its `carried` field; before 2026-11-28's
    # library none did).
    pl=r.pipeline(transaction=False)
    pl.fcall("savestream_start_batch_x", len(shared)+len(keys), *shared, *keys, *args)
    for k,(jid,f) in zip(keys,ents):
        if b"carried" not in f: pl.hgetall(k)
    res=pl.execute()[0]
    for (jid,f),x in zip(ents,res):
        leases.append((f[b"task"].decode(), x[0] if isinstance(x,list) else 1))
dump("start")
for s in range(0,N,B):
    chunk=leases[s:s+B]; args=[]
    for t,a in chunk: args+=[t,str(a),"0","/downloads/file.bin","3600000"]
    r.fcall("savestream_complete_batch_x", len(shared)+len(chunk), *shared, *[K("task:"+t) for t,_ in chunk], *args)
dump("complete")
r.shutdown(nosave=True); p.wait()
tot={}
for f in sorted(glob.glob(out+".*")):
    txt=open(f,errors="replace").read()
    m=re.search(r"^desc: Trigger: dump (\S+)",txt,re.M)
    s=re.search(r"^summary: (\d+)",txt,re.M) or re.search(r"^totals: (\d+)",txt,re.M)
    if m and s: tot[m.group(1)]=int(s.group(1))
print(os.path.basename(lib), {k: f"{v/N/1000:.1f}k instr/task" for k,v in tot.items() if k!="setup"})
