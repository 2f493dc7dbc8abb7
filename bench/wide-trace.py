#!/usr/bin/env python3
"""Writes the bench's wide_300k_jobs trace (bench/benches/simulate.rs, same xorshift) as a CSV for
clusterra simulate: python3 bench/wide-trace.py > /tmp/wide.csv"""
M=(1<<64)-1
x=0x2545f4914f6cdd1d
def nxt():
    global x
    x^=(x<<13)&M; x^=x>>7; x^=(x<<17)&M
    return x
span=90*86400
jobs=[]
for i in range(300000):
    submit=nxt()%span
    run=int(60.0*(240.0**((nxt()%10000)/10000.0)))
    cpus=[1,1,2,4,8,16,32,64][nxt()%8]
    jobs.append((submit,run,cpus,cpus*1024))
for day in range(0,90,3):
    start=day*86400+9*3600
    for _ in range(40):
        cpus=[1024,2048,4096,8192,16384][nxt()%5]
        run=3600+nxt()%(6*3600)
        jobs.append((start+nxt()%3600,run,cpus,None))
with open('/dev/stdout','w') as f:
    f.write("submit_seconds,run_seconds,cpus,memory_mib,time_limit_seconds\n")
    for s,r,c,m in jobs:
        f.write(f"{s},{r},{c},{'' if m is None else m},{r*2}\n")
