"""The slot-machine study (arXiv 2509.22818), the workflow's first user and its demo: the game and
its prompts (`game`), the simulated players that taught the demo model (`players`), the decision
parser (`decision`), Exp1's games and Cohen's d (`exp1`), the study as a task (`task`: the
`slot_machine` entry point), the demo's build and figures (`demo`) and the `pathreplay` command
(`cli`). It may import anything; nothing outside it imports it (tests/test_layout.py)."""
