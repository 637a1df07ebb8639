import random, torch, sys, time
sys.path.insert(0, "tests")
torch.set_num_threads(1)
from conftest import WIKITEXT_EXCERPT, paragraphs
from evaluation.unconditional import featurize, mauve_score
text = WIKITEXT_EXCERPT.read_text()
words = " ".join(paragraphs(text)).split()
texts = [" ".join(words[i:i+40]) for i in range(0, 40*200, 40)]
even = texts[0::2]
pool = [w for x in even for w in x.split()]
random.Random(0).shuffle(pool)
glob = [" ".join(pool[i:i+40]) for i in range(0, len(pool), 40)]
t=time.time()
fe = featurize(even, "all-MiniLM-L6-v2", show_progress=False)
fg = featurize(glob, "all-MiniLM-L6-v2", show_progress=False)
fo = featurize(texts[1::2], "all-MiniLM-L6-v2", show_progress=False)
print(time.time()-t)
print("minilm mean even/global-shuffled", mauve_score(fe, fg)["mauve"], "even/odd", mauve_score(fe, fo)["mauve"])
fe = featurize(even, "/tmp/wtj/gpt", "last", show_progress=False)
fg = featurize(glob, "/tmp/wtj/gpt", "last", show_progress=False)
print("gpt last even/global-shuffled", mauve_score(fe, fg)["mauve"])
