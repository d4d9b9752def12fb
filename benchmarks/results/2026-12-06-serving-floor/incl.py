import collections,sys,re
samples=open(sys.argv[1]).read().split('\n\n')
pats=[(p.partition('=')[0], re.compile(p.partition('=')[2])) for p in sys.argv[2:]]
c=collections.Counter(); tot=0
for smp in samples:
    lines=[l.strip() for l in smp.strip().split('\n') if l.strip()]
    if len(lines)<2: continue
    tot+=1
    frames=[l.split(None,1)[1] if len(l.split(None,1))>1 else l for l in lines[1:]]
    cat='other'
    for f in frames:
        m=[n for n,r in pats if r.search(f)]
        if m: cat=m[0]; break
    c[cat]+=1
print('total',tot)
for k,v in c.most_common(): print(f"{100*v/tot:5.1f}% {v:5d} {k}")
