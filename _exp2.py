import time, random, torch, sys
sys.path.insert(0, "tests")
torch.set_num_threads(1)
from conftest import WIKITEXT_EXCERPT, paragraphs
from evaluation.unconditional import featurize, mauve_score, generative_perplexity
from trainers import train_bpe_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel
text = WIKITEXT_EXCERPT.read_text()
arts = [a for a in text.split("\n\n") if a.strip()]
train, held = "\n\n".join(arts[:-2]), "\n\n".join(arts[-2:])[:60000]
t = time.time()
tok = train_bpe_tokenizer(paragraphs(train), vocab_size=384)
tok.save_pretrained("/tmp/wtj/gpt")
ids = torch.tensor(tok(" ".join(paragraphs(train)))["input_ids"])
print("tokens", len(ids), time.time() - t)
torch.manual_seed(0)
cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
m = GPT2LMHeadModel.from_pretrained("/tmp/wtj/gpt")
opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
g = torch.Generator().manual_seed(0)
t = time.time()
for step in range(0):
    start = torch.randint(0, len(ids) - 65, (16,), generator=g)
    batch = torch.stack([ids[s:s + 64] for s in start])
    loss = m(input_ids=batch, labels=batch).loss
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0: print(step, loss.item())
pass
m.save_pretrained("/tmp/wtj/gpt")
words = " ".join(paragraphs(held)).split()
texts = [" ".join(words[i:i+40]) for i in range(0, 40*200, 40)]
rng = random.Random(0)
def shuffle(x):
    w = x.split(); rng.shuffle(w); return " ".join(w)
even = texts[0::2]
sh = [shuffle(x) for x in even]
print("ppl real", generative_perplexity(even, "/tmp/wtj/gpt", show_progress=False)["gen_ppl"])
print("ppl shuf", generative_perplexity(sh, "/tmp/wtj/gpt", show_progress=False)["gen_ppl"])
for pool in ("last", "mean"):
    fe = featurize(even, "/tmp/wtj/gpt", pool, show_progress=False)
    fo = featurize(texts[1::2], "/tmp/wtj/gpt", pool, show_progress=False)
    fs = featurize(sh, "/tmp/wtj/gpt", pool, show_progress=False)
    print(pool, "even/odd", mauve_score(fe, fo)["mauve"], "even/shuf", mauve_score(fe, fs)["mauve"])
for pool in ("last",):
    fe = featurize(even, "all-MiniLM-L6-v2", pool, show_progress=False)
    fo = featurize(texts[1::2], "all-MiniLM-L6-v2", pool, show_progress=False)
    fs = featurize(sh, "all-MiniLM-L6-v2", pool, show_progress=False)
    print("minilm", pool, "even/odd", mauve_score(fe, fo)["mauve"], "even/shuf", mauve_score(fe, fs)["mauve"])
