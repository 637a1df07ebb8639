import time, random, torch, sys
sys.path.insert(0, "tests")
torch.set_num_threads(1)
from conftest import WIKITEXT_EXCERPT, paragraphs
from evaluation.unconditional import featurize, mauve_score
text = WIKITEXT_EXCERPT.read_text()
words = " ".join(paragraphs(text)).split()
texts = [" ".join(words[i:i+40]) for i in range(0, 40*200, 40)]
rng = random.Random(0)
def shuffle(t):
    w = t.split(); rng.shuffle(w); return " ".join(w)
even, odd = texts[0::2], texts[1::2]
t = time.time()
fe = featurize(even, "all-MiniLM-L6-v2", show_progress=False)
fo = featurize(odd, "all-MiniLM-L6-v2", show_progress=False)
fs = featurize([shuffle(x) for x in even], "all-MiniLM-L6-v2", show_progress=False)
fso = featurize([shuffle(x) for x in odd], "all-MiniLM-L6-v2", show_progress=False)
print("feat time", time.time() - t)
print("self", mauve_score(fe, fe)["mauve"])
print("even vs odd", mauve_score(fe, fo)["mauve"])
print("even vs shuffled even", mauve_score(fe, fs)["mauve"])
print("even vs shuffled odd", mauve_score(fe, fso)["mauve"])
